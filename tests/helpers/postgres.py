"""PostgreSQL for the tests: a fresh database per test on a real server.

The server is the machine's own when one answers on 127.0.0.1:5432 as ``postgres``
(trust auth, as on the development machines), else a private one this module starts
from the installed binaries (Debian's ``postgresql``; ``scripts/install-test-deps``
installs it) in a temporary directory, listening on a Unix socket only, and stops at
the end of the session (``CRDTSYNC_TEST_POSTGRES=private`` asks for the private one
even where the machine has a server). Each test gets a database of its own, dropped
afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

MACHINE_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


class PostgresServer:
    """A server the tests may create and drop databases on (``admin_url``: a database
    to connect to for that)."""

    def __init__(
        self, admin_url: str, url_of: str, restart: Callable[[], None] | None = None
    ) -> None:
        self.admin_url = admin_url
        self._url_of = url_of  #: a URL with ``{name}`` where the database name goes
        self._restart = restart

    def restart(self) -> None:
        """Restart the server (a private one only: the machine's is shared)."""
        if self._restart is None:
            raise RuntimeError("only a private server is restarted by the tests")
        self._restart()

    def url(self, name: str) -> str:
        return self._url_of.format(name=name)

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database for the block (its URL), dropped afterwards, whoever is
        still connected to it."""
        name = f"crdtsync_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.url(name)
        finally:
            with psycopg.connect(self.admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _machine_server() -> PostgresServer | None:
    try:
        with psycopg.connect(MACHINE_SERVER, connect_timeout=2) as probe:
            probe.execute("SELECT 1")
    except psycopg.OperationalError:
        return None
    return PostgresServer(MACHINE_SERVER, "postgresql://postgres@127.0.0.1:5432/{name}")


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "no PostgreSQL server on 127.0.0.1:5432 and no initdb to start one: "
            "run scripts/install-test-deps (it installs Debian's postgresql)"
        )
    return Path(initdb).parent


@contextmanager
def private_postgres_server() -> Iterator[PostgresServer]:
    """A throwaway cluster on a Unix socket in a temporary directory. PostgreSQL refuses
    to run as root: as root, it runs as the ``postgres`` user Debian's package creates."""
    bin_dir = _binaries()
    base = Path(tempfile.mkdtemp(prefix="crdtsync-pg-"))
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (base, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses='' -k {sockets} -c fsync=on"
    # The server's output goes to a log file: a pipe it inherited would keep this
    # process waiting for its end as long as the server runs.
    log = str(base / "server.log")
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            log,
            "-w",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def restart() -> None:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "restart"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    try:
        yield PostgresServer(
            f"postgresql://postgres@/postgres?host={sockets}",
            f"postgresql://postgres@/{{name}}?host={sockets}",
            restart,
        )
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The machine's server if it answers, else a private one (see the module)."""
    private_asked = os.environ.get("CRDTSYNC_TEST_POSTGRES") == "private"
    machine = None if private_asked else _machine_server()
    if machine is not None:
        yield machine
        return
    with private_postgres_server() as private:
        yield private
