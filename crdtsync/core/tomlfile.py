"""Reading a TOML configuration file, for the schema (:meth:`Schema.from_toml
<crdtsync.core.schema.Schema.from_toml>`) and the relay's configuration alike: every
error says which file it is about."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def load_toml_config(
    path: str | Path, parse: Callable[[dict[str, Any]], T], error: type[Exception]
) -> T:
    """Read the TOML file at ``path`` and return ``parse`` of its tables.

    A file that cannot be read, or is not TOML, raises ``error`` saying so; an ``error``
    raised by ``parse`` is raised again with the file's path before its message.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path} is not valid TOML: {exc}") from None
    try:
        return parse(data)
    except error as exc:
        raise error(f"{path}: {exc}") from None
