"""The layers stay layers: the core imports neither side, the client library never
imports the relay, the relay stands on the core alone, and only the apps import both.

Imports are read from the source with ``ast`` (lazy ones inside functions and
``TYPE_CHECKING`` blocks included, relative ones resolved), and checked again at run
time: importing one side loads no module of the other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.harness import ROOT

#: layer -> (its package, the packages it must never import)
LAYERS = {
    "core": ("crdtsync.core", ("crdtsync.client", "crdtsync.apps", "crdtsync_server")),
    "client": ("crdtsync.client", ("crdtsync.apps", "crdtsync_server")),
    "relay": ("crdtsync_server", ("crdtsync.client", "crdtsync.apps")),
}
#: ``crdtsync`` itself re-exports the client library's API: the relay may not import it
TOP_LEVEL_IS_CLIENT = "crdtsync"


def module_files(package: str) -> Iterator[tuple[str, Path]]:
    """(dotted module name, file) of every module in ``package``."""
    top = ROOT / "server" / "crdtsync_server" if package == "crdtsync_server" else None
    top = top or ROOT.joinpath(*package.split("."))
    for path in sorted(top.rglob("*.py")):
        parts = list(path.relative_to(top).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join([package, *parts]), path


def imported_modules(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, wherever it stands."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:  # `from crdtsync import client` imports a module too
                yield node.lineno, f"{name}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(layer: str) -> list[str]:
    package, forbidden = LAYERS[layer]
    found = []
    for module, path in module_files(package):
        for line, name in imported_modules(module, path):
            if any(within(name, other) for other in forbidden) or (
                layer == "relay" and name == TOP_LEVEL_IS_CLIENT
            ):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


@pytest.mark.parametrize("layer", list(LAYERS))
def test_no_module_imports_a_layer_above_or_beside_it(layer: str) -> None:
    assert violations(layer) == []


def test_the_check_sees_lazy_relative_and_dynamic_imports(tmp_path: Path) -> None:
    path = tmp_path / "sample.py"
    path.write_text(
        "import importlib\n"
        "def later():\n"
        "    from crdtsync_server.relay import Relay\n"
        "    from ..apps import cli\n"
        "    return importlib.import_module('crdtsync_server.app')\n"
    )
    names = {name for _, name in imported_modules("crdtsync.client.sample", path)}
    assert {"crdtsync_server.relay", "crdtsync.apps.cli", "crdtsync_server.app"} <= names


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(result.stdout.split())


def test_importing_the_relay_loads_no_client_or_app_module() -> None:
    loaded = loaded_after("import crdtsync_server.app, crdtsync_server.backup")
    assert "crdtsync_server.relay" in loaded
    assert (
        sorted(m for m in loaded if within(m, "crdtsync.client") or within(m, "crdtsync.apps"))
        == []
    )


def test_the_client_api_loads_no_relay_module() -> None:
    loaded = loaded_after("import crdtsync\ncrdtsync.Client, crdtsync.Schema, crdtsync.Status")
    assert "crdtsync.client.facade" in loaded
    assert sorted(m for m in loaded if within(m, "crdtsync_server")) == []
