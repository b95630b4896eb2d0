"""The README Quickstart is what CI runs: two commands, the second verbatim in .ci/run.
Every snippet and command line the README and docs show is one that works."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from crdtsync.apps import cli
from tests.helpers.harness import ROOT
from tests.helpers.relay_process import ServeProcess, free_port


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


def test_the_test_command_installs_the_programs_it_needs() -> None:
    """The browser the web app's tests drive and the nginx the deploy guide's test runs."""
    script = (ROOT / "scripts" / "install-test-deps").read_text()
    assert quickstart_commands()[1].startswith("./scripts/install-test-deps && ")
    assert "apt-get install -y" in script
    assert 'missing="$missing chromium"' in script and 'missing="$missing nginx"' in script
    assert "python3 -m pip install -e '.[test]'" in script


def python_snippets() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.+?)\n```", readme, flags=re.DOTALL)


def test_every_python_snippet_in_the_readme_runs_verbatim_from_any_directory(
    tmp_path: Path,
) -> None:
    """Each snippet, as it is, in a directory of its own away from the repository,
    against a real relay (the environment gives its URL and a token, as the README says)."""
    snippets = python_snippets()
    assert len(snippets) >= 2
    served = ServeProcess(tmp_path / "relay.sqlite3", free_port())
    served.start()
    try:
        env = {
            **os.environ,
            "CRDTSYNC_URL": served.url,
            "CRDTSYNC_TOKEN": served.token("alice"),
        }
        for number, snippet in enumerate(snippets):
            where = tmp_path / f"snippet-{number}"
            where.mkdir()
            (where / "snippet.py").write_text(snippet + "\n")
            done = subprocess.run(
                [sys.executable, "snippet.py"],
                cwd=where,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, f"snippet {number}:\n{snippet}\n{done.stderr}"
    finally:
        served.stop()


def test_every_crdtsync_command_in_the_docs_is_one_the_cli_takes() -> None:
    """Each whole ``crdtsync …`` command in README.md and docs/*.md (one that names its
    ``--config``, in a code block or inline; ``[…]`` marks optional parts, all taken)
    parses: no argument the CLI lacks, none it needs missing."""
    parser = cli._parser()
    seen = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text().replace("\\\n", " ")  # join continued lines
        for found in re.findall(r"(?:^|`|/bin/)(crdtsync [a-z]+ [^`\n]*)", text, flags=re.M):
            command = found.split(" #")[0]
            if "--config" not in command:
                continue  # a mention, not a command
            words = shlex.split(
                re.sub(r"\$\([^)]*\)", "NOW", command).replace("[", " ").replace("]", " ")
            )
            seen.add(words[1])
            try:
                parser.parse_args(words[1:])
            except SystemExit:
                raise AssertionError(f"{doc.name}: {command!r} is not a valid command") from None
    assert seen >= {"serve", "token", "admin", "compact", "backup", "restore", "app"}, seen
