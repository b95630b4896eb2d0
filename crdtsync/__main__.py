"""``python -m crdtsync``: the same as the ``crdtsync`` command."""

import sys

from .cli import main

sys.exit(main())
