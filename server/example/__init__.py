"""The example CRM app (installed as ``crdtsync_example``): ``app.toml`` and its rules.

``CONFIG`` is the path of its configuration, wherever the package is installed::

    from crdtsync_example import CONFIG
    schema = crdtsync.Schema.from_toml(CONFIG)
"""

from importlib import resources
from pathlib import Path

CONFIG = Path(str(resources.files(__name__).joinpath("app.toml")))

__all__ = ["CONFIG"]
