"""``python -m crdtsync``: the same as the ``crdtsync`` command."""

import sys

from crdtsync.apps.cli import main

sys.exit(main())
