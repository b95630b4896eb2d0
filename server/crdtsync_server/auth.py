"""Tokens: signed JWTs naming the user, their roles and whether they administer the app.

Three algorithms, one per authority (a token signed any other way is refused):

* ``HS256`` (the default): one shared secret both issues and verifies. It is the
  configuration's ``[server] secret``, overridden by the ``CRDTSYNC_SECRET`` variable.
* ``RS256`` (RSA, at least 2048 bits) and ``ES256`` (ECDSA on P-256): the relay holds
  only the public key and verifies; whoever issues tokens holds the private key.
  An authority built from a public key alone refuses to :meth:`~TokenAuthority.issue`.

Claims: ``sub`` (the user, required), ``roles`` (a list of names), ``iat``, an optional
``exp`` (checked with :data:`DEFAULT_LEEWAY` seconds of allowance for clock skew) and an
optional ``admin: true``.

``crdtsync token --config app.toml --user alice [--role sales] [--ttl 8h] [--admin]``
prints one; ``--private-key key.pem --algorithm RS256`` signs with a private key.

Errors (see :mod:`.errors`): :class:`~.errors.AuthError` when a token is refused (the
message says why, for the peer to read); :class:`~.errors.TokenKeyError` (a
:class:`~.errors.ConfigError`) when the algorithm, secret or key cannot issue or verify
tokens.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias

import attrs
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import AuthError, TokenKeyError

ALGORITHM: Final = "HS256"
"""The default algorithm: a shared secret."""
ALGORITHMS: Final = ("HS256", "RS256", "ES256")
DEFAULT_LEEWAY: Final = 5.0
"""Seconds a token stays valid past its ``exp`` (and may be dated ahead), for clock skew."""
MIN_RSA_BITS: Final = 2048

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@attrs.frozen
class Identity:
    """Who a verified token names."""

    user: str
    roles: tuple[str, ...] = ()
    expires_at: float | None = None
    admin: bool = False


@attrs.frozen
class TokenAuthority:
    """Issues and verifies tokens with one algorithm and its key(s).

    ``TokenAuthority(secret)`` is an HS256 authority. For RS256 / ES256 use
    :meth:`from_keys` (PEM text) or :meth:`from_key_files`, or pass key objects from
    ``cryptography`` as ``private_key`` / ``public_key``: a private key alone can issue
    and verify, a public key alone can only verify. Misconfiguration raises
    :class:`TokenKeyError` here, at construction, never later at :meth:`verify`.
    """

    secret: str | None = attrs.field(default=None, repr=False)
    algorithm: str = attrs.field(default=ALGORITHM, kw_only=True)
    private_key: PrivateKey | None = attrs.field(default=None, kw_only=True, repr=False)
    public_key: PublicKey | None = attrs.field(default=None, kw_only=True, repr=False)
    leeway: float = attrs.field(default=DEFAULT_LEEWAY, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise TokenKeyError(
                f"unsupported token algorithm {self.algorithm!r}: use {', '.join(ALGORITHMS)}"
            )
        if not math.isfinite(self.leeway) or self.leeway < 0:
            raise TokenKeyError("the token leeway must be a non-negative number of seconds")
        if self.algorithm == "HS256":
            self._check_secret()
        else:
            self._check_keys()

    def _check_secret(self) -> None:
        if self.private_key is not None or self.public_key is not None:
            raise TokenKeyError("HS256 signs with a shared secret, not a key pair")
        if not isinstance(self.secret, str) or not self.secret:
            raise TokenKeyError("HS256 needs a non-empty shared secret")
        try:
            jwt.get_algorithm_by_name("HS256").prepare_key(self.secret)
        except jwt.InvalidKeyError:
            raise TokenKeyError(
                "the HS256 secret is a PEM or SSH key: use a random string, or RS256 / ES256 "
                "with the key pair"
            ) from None

    def _check_keys(self) -> None:
        if self.secret is not None:
            raise TokenKeyError(f"{self.algorithm} verifies with a public key, not a secret")
        if self.private_key is None and self.public_key is None:
            raise TokenKeyError(f"{self.algorithm} needs a public key (or a private key)")
        for key in (self.private_key, self.public_key):
            if key is not None:
                _check_key_fits(key, self.algorithm)
        if self.private_key is not None and self.public_key is not None:
            derived = self.private_key.public_key()
            if derived.public_numbers() != self.public_key.public_numbers():
                raise TokenKeyError("the private and public keys are not a pair")

    @classmethod
    def from_keys(
        cls,
        algorithm: str,
        *,
        private_key_pem: str | bytes | None = None,
        public_key_pem: str | bytes | None = None,
        leeway: float = DEFAULT_LEEWAY,
    ) -> TokenAuthority:
        """An RS256 / ES256 authority from PEM text: give either key, or both."""
        if algorithm not in ALGORITHMS or algorithm == "HS256":
            raise TokenKeyError(f"key pairs are for RS256 or ES256, not {algorithm!r}")
        return cls(
            algorithm=algorithm,
            private_key=_load_private_key(private_key_pem) if private_key_pem else None,
            public_key=_load_public_key(public_key_pem) if public_key_pem else None,
            leeway=leeway,
        )

    @classmethod
    def from_key_files(
        cls,
        algorithm: str,
        *,
        private_key_path: str | Path | None = None,
        public_key_path: str | Path | None = None,
        leeway: float = DEFAULT_LEEWAY,
    ) -> TokenAuthority:
        """:meth:`from_keys`, reading the PEM files; an unreadable file is a TokenKeyError."""
        private = _read_pem(private_key_path) if private_key_path is not None else None
        public = _read_pem(public_key_path) if public_key_path is not None else None
        try:
            return cls.from_keys(
                algorithm, private_key_pem=private, public_key_pem=public, leeway=leeway
            )
        except TokenKeyError as exc:
            paths = [str(p) for p in (private_key_path, public_key_path) if p is not None]
            raise TokenKeyError(f"{' / '.join(paths) or 'no key file'}: {exc}") from None

    @property
    def can_issue(self) -> bool:
        return self.algorithm == "HS256" or self.private_key is not None

    def issue(
        self,
        user: str,
        roles: Sequence[str] = (),
        ttl: float | None = None,
        *,
        admin: bool = False,
    ) -> str:
        """A signed token for ``user``; ``ttl`` seconds of life (None: no expiry).

        Raises :class:`TokenKeyError` if this authority holds only a public key.
        """
        key = self._signing_key
        if not isinstance(user, str) or not user:
            raise ValueError("a token needs a user name")
        if isinstance(roles, str) or not all(isinstance(r, str) and r for r in roles):
            raise ValueError("roles must be a sequence of non-empty names")
        if ttl is not None and not math.isfinite(ttl):
            raise ValueError("a token's ttl must be a finite number of seconds")
        now = time.time()
        claims: dict[str, object] = {"sub": user, "roles": list(roles), "iat": int(now)}
        if ttl is not None:  # rounded up: a token never lives shorter than asked
            claims["exp"] = math.ceil(now + ttl)
        if admin:
            claims["admin"] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short secret is reported once by the server
            return jwt.encode(claims, key, algorithm=self.algorithm)

    def verify(self, token: str) -> Identity:
        """The identity ``token`` names, or :class:`AuthError` saying why it is refused."""
        if not isinstance(token, str | bytes) or not token:
            raise AuthError("no token was given")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token is not valid: it is malformed ({exc})") from None
        alg = header.get("alg")
        if alg != self.algorithm:
            if isinstance(alg, str) and alg.lower() == "none":
                raise AuthError(
                    f"the token is unsigned (alg 'none'): this relay accepts {self.algorithm} only"
                )
            raise AuthError(
                f"the token's algorithm {_describe(alg)} is refused: "
                f"this relay accepts {self.algorithm} only"
            )
        claims = self._decode(token)
        user, roles = claims.get("sub"), claims.get("roles", [])
        if not isinstance(user, str) or not user:
            raise AuthError("the token names no user (no 'sub' claim)")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError("the token's roles must be a list of names")
        admin = claims.get("admin", False)
        if not isinstance(admin, bool):
            raise AuthError("the token's admin claim must be true or false")
        expires = claims.get("exp")
        if expires is not None and (
            isinstance(expires, bool) or not isinstance(expires, int | float)
        ):
            raise AuthError("the token's expiry (exp) must be a number")
        return Identity(
            user, tuple(roles), float(expires) if expires is not None else None, admin=admin
        )

    def _decode(self, token: str | bytes) -> dict[str, Any]:
        key = self._verification_key
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a short secret is reported once by the server
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[self.algorithm],
                    leeway=self.leeway,
                    # sub is checked below, with a message that says what is wrong
                    options={"require": [], "verify_sub": False},
                )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token is not valid yet (it is dated in the future)") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token is not signed by this relay") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token is not valid: {exc}") from None
        except (ValueError, TypeError, OverflowError):  # odd claims, on older PyJWT releases
            raise AuthError("the token is not valid: its claims cannot be read") from None
        return claims

    @property
    def _signing_key(self) -> str | PrivateKey:
        if self.secret is not None:
            return self.secret
        if self.private_key is None:
            raise TokenKeyError(
                f"this {self.algorithm} authority holds only the public key: it can verify "
                "tokens but not issue them (give it the private key)"
            )
        return self.private_key

    @property
    def _verification_key(self) -> str | PublicKey:
        if self.secret is not None:
            return self.secret
        if self.public_key is not None:
            return self.public_key
        assert self.private_key is not None  # __attrs_post_init__ guarantees one of the three
        return self.private_key.public_key()


_DURATION = re.compile(
    r"(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?"
)
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_UNIT_SECONDS: Final = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"8h"``, ``"30m"``, ``"45s"``, ``"2d"``, ``"1h30m"`` or ``"3600"``.

    Units go from largest to smallest, each at most once; numbers may have decimals
    (``"1.5h"``). Anything else, or a zero duration, raises :class:`ValueError` whose
    message says what is accepted.
    """
    stripped = text.strip()
    if _SECONDS.fullmatch(stripped):
        seconds = float(stripped)
    else:
        match = _DURATION.fullmatch(stripped)
        if not stripped or match is None:
            raise ValueError(
                f"{text!r} is not a duration: use e.g. 8h, 30m, 45s, 2d, 1h30m "
                "or a number of seconds"
            )
        seconds = sum(
            float(value) * _UNIT_SECONDS[unit]
            for unit, value in match.groupdict().items()
            if value is not None
        )
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a duration: it must be longer than zero")
    return seconds


def _read_pem(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TokenKeyError(f"cannot read key file {path}: {exc.strerror}") from None


def _load_private_key(pem: str | bytes) -> PrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TokenKeyError("the private key is encrypted: give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TokenKeyError("the private key is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TokenKeyError("the private key is neither an RSA nor an EC key")
    return key


def _load_public_key(pem: str | bytes) -> PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise TokenKeyError("the public key is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise TokenKeyError("the public key is neither an RSA nor an EC key")
    return key


def _check_key_fits(key: PrivateKey | PublicKey, algorithm: str) -> None:
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
            raise TokenKeyError("RS256 needs an RSA key")
        if key.key_size < MIN_RSA_BITS:
            raise TokenKeyError(
                f"the RSA key has {key.key_size} bits: RS256 needs at least {MIN_RSA_BITS}"
            )
    elif algorithm == "ES256":
        if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            raise TokenKeyError("ES256 needs an EC key on the P-256 curve")
        if not isinstance(key.curve, ec.SECP256R1):
            raise TokenKeyError(f"ES256 needs the P-256 curve, not {key.curve.name}")


def _describe(alg: object) -> str:
    """The header's algorithm, quoted only if it is short, printable text (it is untrusted)."""
    if isinstance(alg, str) and alg.isascii() and alg.isprintable() and 0 < len(alg) <= 16:
        return repr(alg)
    return "(missing or unrecognised)"
