"""Tokens: HS256 / RS256 / ES256 authorities, every refusal, TTLs and ``crdtsync token``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
import pytest
from crdtsync_server.auth import (
    Identity,
    PrivateKey,
    TokenAuthority,
    parse_duration,
)
from crdtsync_server.config import RelayConfig
from crdtsync_server.errors import AuthError, ConfigError, TokenKeyError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.harness import EXAMPLE_CONFIG

SECRET = "a shared secret that is long enough for HS256 tokens"

# -- keys and helpers ----------------------------------------------------------------


def private_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def keys(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> dict[str, PrivateKey]:
    return {"RS256": rsa_key, "ES256": ec_key}


def issuer_and_relay(
    algorithm: str, keys: dict[str, PrivateKey]
) -> tuple[TokenAuthority, TokenAuthority]:
    """The authority that issues tokens and the one the relay verifies them with."""
    if algorithm == "HS256":
        return TokenAuthority(SECRET), TokenAuthority(SECRET)
    key = keys[algorithm]
    return (
        TokenAuthority.from_keys(algorithm, private_key_pem=private_pem(key)),
        TokenAuthority.from_keys(algorithm, public_key_pem=public_pem(key)),
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: object, claims: object, hmac_key: bytes | None = None) -> str:
    """A token with any header and claims: HMAC-SHA256 signed with ``hmac_key``, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = (
        hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest() if hmac_key else b""
    )
    return f"{signing_input}.{b64(signature)}"


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "alice", "roles": ["sales"], "iat": int(time.time()), **extra}


def hs256(**extra: object) -> str:
    """A correctly signed HS256 token whose claims are exactly ``claims(**extra)``."""
    return forge({"alg": "HS256", "typ": "JWT"}, claims(**extra), SECRET.encode())


ALGORITHMS = ["HS256", "RS256", "ES256"]

# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_token_round_trips_through_the_relays_authority(
    algorithm: str, keys: dict[str, PrivateKey]
) -> None:
    issuer, relay = issuer_and_relay(algorithm, keys)
    token = issuer.issue("alice", ["sales", "support"], ttl=3600)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    identity = relay.verify(token)
    assert (identity.user, identity.roles, identity.admin) == ("alice", ("sales", "support"), False)
    assert identity.expires_at is not None
    assert abs(identity.expires_at - (time.time() + 3600)) < 5
    assert issuer.verify(token) == identity  # a private key verifies too


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_admin_claim_is_present_only_on_admin_tokens(
    algorithm: str, keys: dict[str, PrivateKey]
) -> None:
    issuer, relay = issuer_and_relay(algorithm, keys)
    admin = issuer.issue("root", admin=True)
    plain = issuer.issue("alice")
    assert jwt.decode(admin, options={"verify_signature": False})["admin"] is True
    assert "admin" not in jwt.decode(plain, options={"verify_signature": False})
    assert relay.verify(admin) == Identity("root", (), None, admin=True)
    assert relay.verify(plain) == Identity("alice", (), None, admin=False)


def test_positional_secret_constructor_and_identity_order_still_work() -> None:
    authority = TokenAuthority(SECRET)
    assert authority.algorithm == "HS256"
    identity = authority.verify(authority.issue("alice", ["sales"], 60))
    assert identity == Identity("alice", ("sales",), identity.expires_at)
    assert Identity("bob", ("x",), 12.0).admin is False
    assert SECRET not in repr(authority)


def test_authority_with_only_a_public_key_verifies_but_cannot_issue(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    relay = TokenAuthority.from_keys("RS256", public_key_pem=public_pem(rsa_key).decode())
    assert not relay.can_issue
    with pytest.raises(TokenKeyError, match="only the public key: it can verify tokens but not"):
        relay.issue("alice")


def test_authority_with_both_keys_checks_they_are_a_pair(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    both = TokenAuthority.from_keys(
        "RS256", private_key_pem=private_pem(rsa_key), public_key_pem=public_pem(rsa_key)
    )
    assert both.verify(both.issue("alice")).user == "alice"
    with pytest.raises(TokenKeyError, match="not a pair"):
        TokenAuthority.from_keys(
            "RS256", private_key_pem=private_pem(rsa_key), public_key_pem=public_pem(other_rsa_key)
        )


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "no token was given"),
        ("not-a-jwt", "the token is not valid: it is malformed"),
        ("a.b.c", "the token is not valid: it is malformed"),
        ("eyJhbGciOiJIUzI1NiJ9.!!!.abc", "the token is not valid"),
        (forge({"alg": "HS256"}, ["not", "an", "object"], SECRET.encode()), "json object"),
        (forge(["header"], claims(), SECRET.encode()), "the token is not valid: it is malformed"),
    ],
    ids=["empty", "one-segment", "garbage-segments", "bad-payload", "list-claims", "list-header"],
)
def test_malformed_token_is_refused(token: str, reason: str) -> None:
    with pytest.raises(AuthError, match=reason):
        TokenAuthority(SECRET).verify(token)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_token_signed_by_someone_else_is_refused(
    algorithm: str, keys: dict[str, PrivateKey], other_rsa_key: rsa.RSAPrivateKey
) -> None:
    _, relay = issuer_and_relay(algorithm, keys)
    stranger = {
        "HS256": TokenAuthority("another relay's secret, also long enough"),
        "RS256": TokenAuthority(algorithm="RS256", private_key=other_rsa_key),
        "ES256": TokenAuthority(
            algorithm="ES256", private_key=ec.generate_private_key(ec.SECP256R1())
        ),
    }[algorithm]
    with pytest.raises(AuthError, match="not signed by this relay"):
        relay.verify(stranger.issue("alice"))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tampered_claims_break_the_signature(algorithm: str, keys: dict[str, PrivateKey]) -> None:
    issuer, relay = issuer_and_relay(algorithm, keys)
    header, _, signature = issuer.issue("alice").split(".")
    promoted = b64(json.dumps(claims(admin=True)).encode())
    with pytest.raises(AuthError, match="not signed by this relay"):
        relay.verify(f"{header}.{promoted}.{signature}")


@pytest.mark.parametrize(
    ("signed_with", "relay_algorithm"),
    [
        ("HS256", "RS256"),
        ("HS256", "ES256"),
        ("RS256", "HS256"),
        ("RS256", "ES256"),
        ("ES256", "RS256"),
        ("ES256", "HS256"),
    ],
)
def test_token_in_another_algorithm_is_refused_naming_both(
    signed_with: str, relay_algorithm: str, keys: dict[str, PrivateKey]
) -> None:
    issuer, _ = issuer_and_relay(signed_with, keys)
    _, relay = issuer_and_relay(relay_algorithm, keys)
    with pytest.raises(
        AuthError,
        match=f"algorithm '{signed_with}' is refused: this relay accepts {relay_algorithm} only",
    ):
        relay.verify(issuer.issue("alice"))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_alg_none_token_is_refused(
    algorithm: str, alg: str, keys: dict[str, PrivateKey]
) -> None:
    _, relay = issuer_and_relay(algorithm, keys)
    with pytest.raises(AuthError, match=f"unsigned .alg 'none'.: this relay accepts {algorithm}"):
        relay.verify(forge({"alg": alg, "typ": "JWT"}, claims(admin=True)))


@pytest.mark.parametrize("header", [{"typ": "JWT"}, {"alg": 256}, {"alg": "x" * 200}])
def test_missing_or_odd_algorithm_is_refused_without_echoing_it(header: object) -> None:
    with pytest.raises(AuthError, match=r"algorithm \(missing or unrecognised\) is refused"):
        TokenAuthority(SECRET).verify(forge(header, claims(), SECRET.encode()))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_hs256_token_keyed_with_the_public_key_is_refused(
    algorithm: str, keys: dict[str, PrivateKey]
) -> None:
    """The key-confusion attack: HMAC with the (public) PEM, hoping it is used as a secret."""
    _, relay = issuer_and_relay(algorithm, keys)
    pem = public_pem(keys[algorithm])
    for key in (pem, pem.strip()):
        attack = forge({"alg": "HS256", "typ": "JWT"}, claims(admin=True), key)
        with pytest.raises(AuthError, match=f"'HS256' is refused: this relay accepts {algorithm}"):
            relay.verify(attack)
    # ...and no HS256 authority can be built around a PEM either.
    with pytest.raises(TokenKeyError, match="is a PEM or SSH key"):
        TokenAuthority(pem.decode())


def test_expired_token_is_refused_after_the_leeway() -> None:
    authority = TokenAuthority(SECRET)
    with pytest.raises(AuthError, match="the token has expired"):
        authority.verify(authority.issue("alice", ttl=-10))
    with pytest.raises(AuthError, match="the token has expired"):
        authority.verify(hs256(exp=int(time.time()) - 3600))


def test_a_short_lived_token_lives_at_least_as_long_as_asked() -> None:
    authority = TokenAuthority(SECRET, leeway=0)
    for _ in range(20):  # whatever the fraction of the second it is issued at
        before = time.time()
        identity = authority.verify(authority.issue("alice", ttl=1))
        assert identity.expires_at is not None and identity.expires_at >= before + 1
        time.sleep(0.05)


def test_token_just_past_expiry_is_accepted_within_the_leeway() -> None:
    token = TokenAuthority(SECRET).issue("alice", ttl=-2)
    assert TokenAuthority(SECRET).verify(token).user == "alice"
    with pytest.raises(AuthError, match="the token has expired"):
        TokenAuthority(SECRET, leeway=0).verify(token)


def test_token_dated_in_the_future_is_refused() -> None:
    with pytest.raises(AuthError, match="not valid yet"):
        TokenAuthority(SECRET).verify(hs256(iat=int(time.time()) + 3600))
    assert TokenAuthority(SECRET).verify(hs256(iat=int(time.time()) + 2)).user == "alice"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"sub": None}, "names no user"),
        ({"sub": ""}, "names no user"),
        ({"sub": 42}, "names no user"),
        ({"sub": ["alice"]}, "names no user"),
        ({"roles": "sales"}, "roles must be a list of names"),
        ({"roles": {"sales": True}}, "roles must be a list of names"),
        ({"roles": ["sales", 1]}, "roles must be a list of names"),
        ({"roles": None}, "roles must be a list of names"),
        ({"admin": "yes"}, "admin claim must be true or false"),
        ({"admin": 1}, "admin claim must be true or false"),
        ({"exp": "soon"}, r"the token is not valid: .*\(exp\)"),
        ({"iat": "then"}, r"the token is not valid: .*\(iat\)"),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else "",
)
def test_correctly_signed_token_with_bad_claims_is_refused(
    extra: dict[str, object], reason: str
) -> None:
    with pytest.raises(AuthError, match=reason):
        TokenAuthority(SECRET).verify(hs256(**extra))


def test_token_without_sub_is_refused_naming_the_claim() -> None:
    token = forge({"alg": "HS256"}, {"roles": [], "iat": int(time.time())}, SECRET.encode())
    with pytest.raises(AuthError, match=r"the token names no user \(no 'sub' claim\)"):
        TokenAuthority(SECRET).verify(token)


def test_absent_roles_and_admin_default_to_none_and_false() -> None:
    token = forge({"alg": "HS256"}, {"sub": "alice"}, SECRET.encode())
    assert TokenAuthority(SECRET).verify(token) == Identity("alice")
    assert TokenAuthority(SECRET).verify(hs256(admin=False)).admin is False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    header=st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit", "b64"]), json_values)
    | json_values,
    payload=st.dictionaries(
        st.sampled_from(["sub", "roles", "admin", "exp", "iat", "nbf", "aud", "jti"]), json_values
    )
    | json_values,
)
def test_verify_answers_any_signed_token_with_an_identity_or_an_auth_error(
    header: object, payload: object
) -> None:
    if isinstance(header, dict) and "alg" not in header and len(header) % 2:
        header["alg"] = "HS256"  # reach the claim checks often, not only the header check
    refusal: AuthError | None = None
    try:
        identity = TokenAuthority(SECRET).verify(forge(header, payload, SECRET.encode()))
    except AuthError as exc:
        refusal = exc
    if refusal is not None:
        assert str(refusal).startswith(("the token", "no token"))
    else:
        assert isinstance(identity.user, str) and identity.user
        assert all(isinstance(role, str) for role in identity.roles)
        assert isinstance(identity.admin, bool)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_verify_answers_any_text_with_an_auth_error(text: str) -> None:
    with pytest.raises(AuthError):
        TokenAuthority(SECRET).verify(text)


# -- building an authority -----------------------------------------------------------


def test_bad_algorithm_secret_or_key_is_a_token_key_error_at_construction(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"secret": SECRET, "algorithm": "HS512"}, "unsupported token algorithm 'HS512'"),
        ({"secret": SECRET, "algorithm": "none"}, "unsupported token algorithm 'none'"),
        ({"secret": ""}, "HS256 needs a non-empty shared secret"),
        ({}, "HS256 needs a non-empty shared secret"),
        ({"secret": SECRET, "private_key": rsa_key}, "HS256 signs with a shared secret"),
        ({"algorithm": "RS256"}, "RS256 needs a public key"),
        ({"algorithm": "RS256", "secret": SECRET}, "RS256 verifies with a public key, not a"),
        ({"algorithm": "RS256", "private_key": ec_key}, "RS256 needs an RSA key"),
        ({"algorithm": "ES256", "public_key": rsa_key.public_key()}, "ES256 needs an EC key"),
        (
            {"algorithm": "ES256", "private_key": ec.generate_private_key(ec.SECP384R1())},
            "ES256 needs the P-256 curve, not secp384r1",
        ),
        (
            {"algorithm": "RS256", "private_key": rsa.generate_private_key(65537, 1024)},
            "the RSA key has 1024 bits: RS256 needs at least 2048",
        ),
        ({"secret": SECRET, "leeway": -1.0}, "leeway must be a non-negative"),
    ]
    for arguments, message in cases:
        with pytest.raises(TokenKeyError, match=message):
            TokenAuthority(**arguments)  # type: ignore[arg-type]
    assert issubclass(TokenKeyError, ConfigError)  # the CLI and relay report it as config


def test_unreadable_pem_is_a_clear_token_key_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(TokenKeyError, match="key pairs are for RS256 or ES256, not 'HS256'"):
        TokenAuthority.from_keys("HS256", private_key_pem=private_pem(rsa_key))
    with pytest.raises(TokenKeyError, match="the private key is not a PEM private key"):
        TokenAuthority.from_keys("RS256", private_key_pem="not a key")
    with pytest.raises(TokenKeyError, match="the public key is not a PEM public key"):
        TokenAuthority.from_keys("RS256", public_key_pem=private_pem(rsa_key))
    with pytest.raises(TokenKeyError, match="the private key is encrypted"):
        TokenAuthority.from_keys("RS256", private_key_pem=private_pem(rsa_key, b"pass"))
    with pytest.raises(TokenKeyError, match=r"cannot read key file .*missing.pem: No such file"):
        TokenAuthority.from_key_files("RS256", public_key_path=tmp_path / "missing.pem")
    wrong = tmp_path / "rsa.pem"
    wrong.write_bytes(private_pem(rsa_key))
    with pytest.raises(TokenKeyError, match=r"rsa.pem: ES256 needs an EC key"):
        TokenAuthority.from_key_files("ES256", private_key_path=wrong)


@pytest.mark.parametrize(
    ("user", "roles", "ttl", "message"),
    [
        ("", (), None, "a token needs a user name"),
        ("alice", "sales", None, "roles must be a sequence of non-empty names"),
        ("alice", ["sales", ""], None, "roles must be a sequence of non-empty names"),
        ("alice", (), float("inf"), "ttl must be a finite number"),
    ],
)
def test_issue_refuses_arguments_that_make_no_token(
    user: str, roles: list[str], ttl: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TokenAuthority(SECRET).issue(user, roles, ttl)


# -- durations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("8h", 8 * 3600),
        ("30m", 1800),
        ("45s", 45),
        ("2d", 2 * 86400),
        ("1h30m", 5400),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
        ("1.5h", 5400),
        ("3600", 3600),
        ("0.5", 0.5),
        (" 8h ", 8 * 3600),
        ("0h30m", 1800),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a duration: use e.g. 8h"),
        ("   ", "not a duration: use e.g. 8h"),
        ("8x", "not a duration: use e.g. 8h"),
        ("h", "not a duration"),
        ("8", None),
        ("-5m", "not a duration"),
        ("-3600", "not a duration"),
        ("30m1h", "not a duration"),
        ("1h1h", "not a duration"),
        ("1h 30m", "not a duration"),
        ("8H", "not a duration"),
        ("1e3", "not a duration"),
        ("inf", "not a duration"),
        ("nan", "not a duration"),
        ("0", "must be longer than zero"),
        ("0h0m", "must be longer than zero"),
    ],
)
def test_parse_duration_rejects_junk_clearly(text: str, reason: str | None) -> None:
    if reason is None:  # a control: bare numbers are seconds
        assert parse_duration(text) == 8
        return
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


# -- the command line ----------------------------------------------------------------


#: where the token command runs: the example's relative database, and the secret the
#: relay keeps beside it, land here
RUN_DIR = Path(tempfile.mkdtemp(prefix="crdtsync-token-"))


def run_token(*args: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CRDTSYNC_SECRET"}
    if secret is not None:
        env["CRDTSYNC_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "crdtsync", "token", "--config", str(EXAMPLE_CONFIG), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=RUN_DIR,
    )


def the_relays_authority() -> TokenAuthority:
    """What a relay on the example config, run from ``RUN_DIR``, verifies with."""
    database = str(RUN_DIR / "crdtsync.sqlite3")
    return RelayConfig.from_toml(EXAMPLE_CONFIG, database=database).token_authority()


def test_cli_signs_hs256_with_the_config_secret_ttl_roles_and_admin() -> None:
    result = run_token("--user", "root", "--role", "a", "--role", "b", "--ttl", "1h30m", "--admin")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    relay = the_relays_authority()
    identity = relay.verify(token)
    assert (identity.user, identity.roles, identity.admin) == ("root", ("a", "b"), True)
    assert identity.expires_at is not None
    assert abs(identity.expires_at - (time.time() + 5400)) < 30
    plain = relay.verify(run_token("--user", "alice").stdout.strip())
    assert (plain.admin, plain.expires_at) == (False, None)


def test_cli_secret_from_the_environment_overrides_the_config() -> None:
    result = run_token("--user", "alice", secret=SECRET)
    assert result.returncode == 0, result.stderr
    assert TokenAuthority(SECRET).verify(result.stdout.strip()).user == "alice"
    with pytest.raises(AuthError, match="not signed by this relay"):
        the_relays_authority().verify(result.stdout.strip())


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_cli_signs_with_a_private_key_the_relay_verifies_with_the_public_key(
    algorithm: str, keys: dict[str, PrivateKey], tmp_path: Path
) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_pem(keys[algorithm]))
    result = run_token(
        "--user", "alice", "--private-key", str(key_file), "--algorithm", algorithm, "--ttl", "8h"
    )
    assert result.returncode == 0, result.stderr
    relay = TokenAuthority.from_keys(algorithm, public_key_pem=public_pem(keys[algorithm]))
    assert relay.verify(result.stdout.strip()).user == "alice"


def one_clear_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("crdtsync: error: ")
    return line


@pytest.mark.parametrize("ttl", ["8x", "-1h", "0", "soon"])
def test_cli_bad_ttl_is_one_clear_error(ttl: str) -> None:
    line = one_clear_error(run_token("--user", "alice", f"--ttl={ttl}"))
    assert line.startswith(f"crdtsync: error: --ttl: {ttl!r} is not a duration")


def test_cli_unreadable_or_unfit_key_file_is_one_clear_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    missing = tmp_path / "missing.pem"
    line = one_clear_error(
        run_token("--user", "a", "--private-key", str(missing), "--algorithm", "RS256")
    )
    assert f"cannot read key file {missing}: No such file or directory" in line
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    line = one_clear_error(
        run_token("--user", "a", "--private-key", str(garbage), "--algorithm", "ES256")
    )
    assert "the private key is not a PEM private key" in line
    rsa_file = tmp_path / "rsa.pem"
    rsa_file.write_bytes(private_pem(rsa_key))
    line = one_clear_error(
        run_token("--user", "a", "--private-key", str(rsa_file), "--algorithm", "ES256")
    )
    assert "ES256 needs an EC key" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--private-key", "key.pem"], "--private-key and --algorithm RS256|ES256 go together"),
        (["--algorithm", "RS256"], "--private-key and --algorithm RS256|ES256 go together"),
        (
            ["--algorithm", "HS256", "--private-key", "key.pem"],
            "--private-key and --algorithm RS256|ES256 go together",
        ),
        (["--role", ""], "roles must be a sequence of non-empty names"),
    ],
)
def test_cli_inconsistent_options_are_one_clear_error(args: list[str], message: str) -> None:
    assert message in one_clear_error(run_token("--user", "alice", *args))


def test_cli_explicit_hs256_and_empty_user() -> None:
    result = run_token("--user", "alice", "--algorithm", "HS256")
    assert result.returncode == 0, result.stderr
    assert the_relays_authority().verify(result.stdout.strip()).user == "alice"
    assert "a token needs a user name" in one_clear_error(run_token("--user", ""))
