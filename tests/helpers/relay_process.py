"""``crdtsync serve`` as a real process for tests: start it on a free port with a config,
read its health, make clients for it, kill it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from crdtsync import Client
from tests.helpers.harness import EXAMPLE_CONFIG

SECRET = "a-long-enough-test-secret-of-32-bytes!"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """One relay process on ``database`` (a SQLite file, or a PostgreSQL URL) and
    ``port``, configured by ``config``."""

    def __init__(
        self,
        database: Path | str,
        port: int,
        config: Path = EXAMPLE_CONFIG,
        *,
        secret: str | None = SECRET,
        home: Path | None = None,
    ) -> None:
        """``secret``: the ``CRDTSYNC_SECRET`` it runs with (``None``: none, so the relay
        uses the one it keeps beside its database). ``home``: a directory for the
        clients' stores (default: the SQLite file's)."""
        self.database, self.port, self.config, self.secret = database, port, config, secret
        if home is None:
            assert isinstance(database, Path), "a relay on PostgreSQL needs a home for stores"
            home = database.parent
        self.home = home
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []  #: what the process printed, read when it stops

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CRDTSYNC_SECRET"}
        if self.secret is not None:
            env["CRDTSYNC_SECRET"] = self.secret
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crdtsync",
                "serve",
                "--config",
                str(self.config),
                "--db",
                str(self.database),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert "listening" in line, line
        # Drain what it prints from now on, so a chatty relay never blocks on a full pipe.
        self._reader = threading.Thread(
            target=self._drain, args=(self.process.stdout,), daemon=True
        )
        self._reader.start()

    def _drain(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.output.append(line)

    def get(self, path: str) -> tuple[int, str]:
        status, _content_types, text = self.get_with_types(path)
        return status, text

    def get_with_types(self, path: str) -> tuple[int, list[str], str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
            return reply.status, reply.headers.get_all("Content-Type"), reply.read().decode()

    def token(self, user: str) -> str:
        from crdtsync_server.config import RelayConfig

        config = RelayConfig.from_toml(self.config, database=str(self.database), secret=self.secret)
        return config.token_authority().issue(user)

    def client(
        self, user: str, store: Path, *, url: str | list[str] | None = None, **options: object
    ) -> Client:
        options.setdefault("backoff_initial", 0.05)
        options.setdefault("backoff_max", 0.3)
        return Client(
            url or self.url,
            token=self.token(user),
            store=str(store),
            schema=self.config,
            **options,  # type: ignore[arg-type]
        )

    def stop(self) -> str:
        """Kill the process (if running); return everything it printed."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self._reader.join(timeout=5)
            self.process = None
        return "".join(self.output)
