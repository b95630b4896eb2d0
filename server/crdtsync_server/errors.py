"""Every exception the relay package raises on purpose, in one tree.

Each message says what went wrong in words meant for the person who can fix it (an
operator, an administrator, a replica's user); none ever holds a secret or a token::

    CrdtsyncError                 crdtsync.core.exceptions: anything crdtsync raises
     └── RelayError               anything the relay package raises
          ├── ConfigError         the configuration is invalid; the message names the entry
          │    └── TokenKeyError  the algorithm, secret or key cannot issue or verify tokens
          ├── AuthError           a token was refused: missing, malformed, badly signed,
          │                       expired (the message is for the peer to read)
          ├── StorageError        the relay's database cannot be opened or is not one
          └── AdminError          the relay refused an administrator's action (or the
                                  connection), as seen by :class:`~.admin_client.AdminClient`
"""

from __future__ import annotations

from crdtsync.core.exceptions import CrdtsyncError

__all__ = [
    "AdminError",
    "AuthError",
    "ConfigError",
    "CrdtsyncError",
    "RelayError",
    "StorageError",
    "TokenKeyError",
]


class RelayError(CrdtsyncError):
    """Anything the relay package raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid; the message names the offending entry."""


class TokenKeyError(ConfigError):
    """The algorithm, secret or key given cannot issue (or verify) tokens; the message says why."""


class AuthError(RelayError):
    """The token is missing, malformed, wrongly signed or expired; the message says which."""


class StorageError(RelayError):
    """The relay's database cannot be opened or is not a crdtsync relay database."""


class AdminError(RelayError):
    """The relay refused the action (or the connection); the message says why."""
