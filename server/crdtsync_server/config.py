"""The relay's configuration: the app's TOML file, plus command-line overrides.

``[server]``: ``host``, ``port``, ``database``, ``secret`` (HS256 token key, at least
32 bytes and no placeholder; ``CRDTSYNC_SECRET`` overrides it; with neither, the relay
creates a random one beside its database, ``DATABASE.secret``, mode 0600, which
``crdtsync token`` reads), ``token_algorithm`` (``HS256``, ``RS256`` or
``ES256``), ``token_public_key`` (PEM file, for RS256 / ES256), ``token_leeway``
(seconds of clock skew), ``tls_certificate`` and ``tls_key`` (PEM files: the relay
then serves ``wss://`` and HTTPS itself), and limits (``max_frame_bytes``, ``max_queued_bytes``,
``cache_records``; against floods ``max_frames_per_second`` and ``frame_burst`` per
connection, ``max_connections`` per relay, ``0`` turning either off). ``[objects.*]``
is the schema (see :class:`crdtsync.Schema`), ``[roles.*]`` and the top-level
``policy = "pkg.mod:Class"`` hook the access model (see
:class:`~crdtsync_server.policy.AccessPolicy`). ``--db``, ``--host`` and ``--port``
override the file. ``database`` is a SQLite file (relative paths are relative to the
current directory) or a ``postgresql://`` URL (then ``secret``, or an RS256 / ES256 key,
must be configured: there is no file to keep one beside).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from crdtsync.core.exceptions import SchemaError
from crdtsync.core.protocol import MAX_CHANGES_PER_FRAME, MAX_FRAME_BYTES
from crdtsync.core.schema import Schema
from crdtsync.core.tomlfile import load_toml_config

from .auth import TokenAuthority
from .database import is_postgres_url, shown_url
from .errors import ConfigError
from .limits import FRAME_BURST, MAX_CONNECTIONS, MAX_FRAMES_PER_SECOND, MAX_RECORD_BYTES
from .policy import AccessPolicy

_SERVER_KEYS = frozenset(
    {
        "host",
        "port",
        "database",
        "secret",
        "max_frame_bytes",
        "max_changes_per_frame",
        "max_record_bytes",
        "max_queued_bytes",
        "cache_records",
        "token_algorithm",
        "token_public_key",
        "token_leeway",
        "tls_certificate",
        "tls_key",
        "max_frames_per_second",
        "frame_burst",
        "max_connections",
    }
)


@attrs.frozen(kw_only=True)
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    database: str = "crdtsync.sqlite3"
    #: the HS256 signing key as configured (``None``: the relay's own, see :meth:`signing_secret`)
    secret: str | None = attrs.field(default=None, repr=False)
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_changes_per_frame: int = MAX_CHANGES_PER_FRAME  #: changes decided in one push frame
    max_record_bytes: int = MAX_RECORD_BYTES  #: a record's whole CRDT state, at most
    max_queued_bytes: int = 64 * 1024 * 1024
    cache_records: int = 10_000
    max_frames_per_second: float = MAX_FRAMES_PER_SECOND  #: per connection; 0: no limit
    frame_burst: int = FRAME_BURST  #: frames a connection may send at once, above the rate
    max_connections: int = MAX_CONNECTIONS  #: open websockets; 0: no limit
    token_algorithm: str = "HS256"
    token_public_key: str | None = None  #: PEM file the relay verifies RS256/ES256 tokens with
    token_leeway: float = 5.0  #: seconds of clock skew allowed on a token's times
    tls_certificate: str | None = None  #: PEM certificate chain: serve wss:// and HTTPS
    tls_key: str | None = None  #: PEM private key of ``tls_certificate``
    schema: Schema
    policy: AccessPolicy

    @property
    def url(self) -> str:
        """Where a replica on this machine reaches the relay: ``ws://`` or, with a
        certificate, ``wss://``, on ``host`` (loopback when it listens everywhere)."""
        scheme = "ws" if self.tls_certificate is None else "wss"
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        return f"{scheme}://{host}:{self.port}"

    @property
    def secret_path(self) -> Path | None:
        """Where the relay keeps the secret it made itself: beside its database file
        (``None`` for a database that is not a file)."""
        if self.database == ":memory:" or "://" in self.database:
            return None
        return Path(f"{self.database}.secret")

    def signing_secret(self) -> str:
        """The HS256 key: the configured one, else the one beside the database, created
        (random, mode 0600) the first time it is needed."""
        if self.secret is not None:
            return self.secret
        path = self.secret_path
        if path is None:
            raise ConfigError(
                f"[server] secret (or CRDTSYNC_SECRET) is needed: the database "
                f"{shown_url(self.database)!r} is not a file the relay can keep its own "
                "secret beside"
            )
        return _secret_beside_database(path)

    def fingerprint(self) -> str:
        """A digest of what every relay on one database must agree on: the schema, the
        roles' grants and the policy hook (see ``RelayStorage.agree_on_configuration``)."""
        hook = self.policy.hook
        agreed = {
            "schema": self.schema.to_wire(),
            "grants": {
                role: {name: sorted(actions) for name, actions in table.items()}
                for role, table in self.policy.grants.items()
            },
            "hook": None if hook is None else f"{type(hook).__module__}.{type(hook).__qualname__}",
        }
        text = json.dumps(agreed, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context the relay serves with (``None``: plain ``ws://`` and HTTP)."""
        if self.tls_certificate is None or self.tls_key is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        for key, path in (("tls_certificate", self.tls_certificate), ("tls_key", self.tls_key)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"[server] {key}: cannot read {path}: {exc.strerror}") from None
        try:
            context.load_cert_chain(self.tls_certificate, self.tls_key)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"[server] tls_certificate {self.tls_certificate} and tls_key {self.tls_key} "
                f"are not a PEM certificate and its private key ({exc.reason or exc})"
            ) from None
        return context

    def token_authority(self) -> TokenAuthority:
        """The authority that verifies this relay's tokens (and, for HS256, issues them)."""
        if self.token_algorithm == "HS256":
            return TokenAuthority(self.signing_secret(), leeway=self.token_leeway)
        if self.token_public_key is None:
            raise ConfigError(
                f"[server] token_algorithm = {self.token_algorithm!r} needs token_public_key, "
                "the PEM file of the key that verifies tokens"
            )
        return TokenAuthority.from_key_files(
            self.token_algorithm, public_key_path=self.token_public_key, leeway=self.token_leeway
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> RelayConfig:
        server = data.get("server", {})
        if not isinstance(server, Mapping):
            raise ConfigError("[server] must be a table")
        unknown = sorted(set(server) - _SERVER_KEYS)
        if unknown:
            raise ConfigError(f"[server]: unknown key(s) {', '.join(unknown)}")
        try:
            schema = Schema.from_dict(data)
        except SchemaError as exc:
            raise ConfigError(str(exc)) from None
        roles = data.get("roles", {})
        if not isinstance(roles, Mapping):
            raise ConfigError("[roles] must be a table of role tables")
        hook = data.get("policy")
        if hook is not None and not isinstance(hook, str):
            raise ConfigError("policy must be a 'package.module:Class' string")
        policy = AccessPolicy.from_config(roles, schema, hook)
        settings: dict[str, Any] = {key: server[key] for key in _SERVER_KEYS if key in server}
        if os.environ.get("CRDTSYNC_SECRET"):
            settings["secret"] = os.environ["CRDTSYNC_SECRET"]
        settings.update({key: value for key, value in overrides.items() if value is not None})
        for key, kind in (
            ("host", str),
            ("database", str),
            ("secret", str),
            ("token_algorithm", str),
            ("token_public_key", str),
            ("tls_certificate", str),
            ("tls_key", str),
        ):
            if key in settings and not isinstance(settings[key], kind):
                raise ConfigError(f"[server] {key} must be a string")
        leeway = settings.get("token_leeway")
        if leeway is not None and (isinstance(leeway, bool) or not isinstance(leeway, int | float)):
            raise ConfigError("[server] token_leeway must be a number of seconds")
        rate = settings.get("max_frames_per_second")
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1e12
        ):
            raise ConfigError("[server] max_frames_per_second must be a non-negative number")
        for key in (
            "port",
            "max_frame_bytes",
            "max_changes_per_frame",
            "max_record_bytes",
            "max_queued_bytes",
            "cache_records",
            "frame_burst",
            "max_connections",
        ):
            value = settings.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ConfigError(f"[server] {key} must be a non-negative integer")
        if settings.get("frame_burst") == 0:
            raise ConfigError("[server] frame_burst must be at least 1")
        if settings.get("max_changes_per_frame") == 0:
            raise ConfigError("[server] max_changes_per_frame must be at least 1")
        if settings.get("max_record_bytes") == 0:
            raise ConfigError("[server] max_record_bytes must be at least 1")
        secret = settings.get("secret")
        if secret is not None:
            _check_secret(secret, "[server] secret (or CRDTSYNC_SECRET)")
        elif settings.get("database") == ":memory:":
            settings["secret"] = secrets.token_urlsafe(48)  # nothing to keep one beside
        elif (
            is_postgres_url(str(settings.get("database", "")))
            and settings.get("token_algorithm", "HS256") == "HS256"
        ):
            raise ConfigError(
                "[server] secret (or CRDTSYNC_SECRET) is needed with a PostgreSQL database: "
                "there is no file to keep the relay's own beside it (give every relay on "
                "that database the same secret)"
            )
        if ("tls_certificate" in settings) != ("tls_key" in settings):
            raise ConfigError(
                "[server] tls_certificate and tls_key go together: give both PEM files "
                "(or neither, for plain ws:// behind a TLS proxy)"
            )
        config = cls(schema=schema, policy=policy, **settings)
        config.tls_context()  # a missing or mismatched certificate or key fails here, clearly
        if config.token_algorithm != "HS256" or config.secret is not None:
            config.token_authority()  # a bad algorithm, key file or secret fails here, clearly
        return config

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> RelayConfig:
        return load_toml_config(path, lambda data: cls.from_dict(data, **overrides), ConfigError)


#: Secrets shipped in examples and docs: a relay never signs or accepts tokens with them.
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme", "secret", "password", "placeholder"})
MIN_SECRET_BYTES = 32


def _check_secret(secret: str, where: str) -> None:
    """A secret anyone could guess is refused, never used: the relay would accept tokens
    anyone can mint, for any user, administrators included."""
    if secret.strip().lower() in PLACEHOLDER_SECRETS:
        raise ConfigError(
            f"{where} is the placeholder {secret!r}: anyone could sign tokens with it. Remove "
            "it (the relay then makes a random one beside its database) or set a long random "
            "one"
        )
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{where} is {len(secret.encode('utf-8'))} bytes: at least {MIN_SECRET_BYTES} "
            "random bytes are needed (e.g. python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(48))'), or remove it and the relay makes one"
        )


def _secret_beside_database(path: Path) -> str:
    """Read the relay's own secret, or create it: random, written to a private temporary
    file and linked into place, so two processes starting at once end up with the same
    one, and no one ever reads it half written."""
    for _ in range(2):
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(f"cannot read the relay's secret {path}: {exc.strerror}") from None
        else:
            _check_secret(secret, f"the relay's secret {path}")
            return secret
        fresh = secrets.token_urlsafe(48)
        draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(fresh + "\n")
            try:
                os.link(draft, path)
            except FileExistsError:
                continue  # another process made it first: read theirs
            finally:
                draft.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot create the relay's secret {path}: {exc.strerror}") from None
        return fresh
    raise ConfigError(f"cannot read or create the relay's secret {path}")
