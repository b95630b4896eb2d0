"""The README Quickstart is what CI runs: two commands, the second verbatim in .ci/run."""

from __future__ import annotations

import re

from .conftest import ROOT


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_quickstart_has_exactly_two_commands() -> None:
    commands = quickstart_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = quickstart_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
    assert "pytest" in test_command


SCREENSHOTS = ("object-home", "record", "pending-changes", "conflict", "unresolvable")


def test_readme_shows_the_reference_app_and_its_one_command() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Reference app", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"```sh\n(.+?)\n```", section) == ["crdtsync demo"]
    for name in SCREENSHOTS:
        assert f"](docs/img/{name}.png)" in section, name
        image = ROOT / "docs" / "img" / f"{name}.png"
        assert image.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), image
        assert image.stat().st_size < 300_000, f"{image} is too big to commit"


def test_the_test_command_installs_the_browser_it_needs() -> None:
    script = (ROOT / "scripts" / "install-test-deps").read_text()
    assert quickstart_commands()[1].startswith("./scripts/install-test-deps && ")
    assert "apt-get install -y" in script and "chromium" in script
    assert "python3 -m pip install -e '.[test]'" in script
