"""Tokens: signed JWTs (HS256) naming the user and their roles.

``crdtsync token --config app.toml --user alice [--role sales] [--ttl 3600]`` prints
one. The signing secret is the configuration's ``[server] secret``, overridden by the
``CRDTSYNC_SECRET`` environment variable.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import attrs
import jwt

ALGORITHM = "HS256"


class AuthError(Exception):
    """The token is missing, malformed, wrongly signed or expired; the message says which."""


@attrs.frozen
class Identity:
    user: str
    roles: tuple[str, ...] = ()
    expires_at: float | None = None


@attrs.frozen
class TokenAuthority:
    """Issues and verifies tokens with one shared secret."""

    secret: str = attrs.field(repr=False)

    def issue(self, user: str, roles: Sequence[str] = (), ttl: float | None = None) -> str:
        if not user:
            raise ValueError("a token needs a user name")
        now = int(time.time())
        claims: dict[str, object] = {"sub": user, "roles": list(roles), "iat": now}
        if ttl is not None:
            claims["exp"] = now + int(ttl)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short secret is reported once by the server
            return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Identity:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                claims = jwt.decode(
                    token, self.secret, algorithms=[ALGORITHM], options={"require": ["sub"]}
                )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token is not signed by this relay") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token is not valid: {exc}") from None
        user, roles = claims.get("sub"), claims.get("roles", [])
        if not isinstance(user, str) or not user:
            raise AuthError("the token names no user")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError("the token's roles must be a list of names")
        expires = claims.get("exp")
        return Identity(user, tuple(roles), float(expires) if expires is not None else None)
