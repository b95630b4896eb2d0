"""What a security audit of real relays on loopback found, each turned into a test: no
one reads, rewrites or stalls what they shouldn't.

S1: a retransmission (or any other answer that carries stored state) after compaction
never returns what the user may no longer read. S2: a relay never accepts tokens signed
with a placeholder, empty or short secret; with none configured it makes its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import jwt
import msgpack
import pycrdt
import pytest
from crdtsync_server import backlog as backlog_module
from crdtsync_server import merge
from crdtsync_server.config import RelayConfig
from crdtsync_server.errors import ConfigError
from crdtsync_server.storage import RelayStorage
from websockets.asyncio.client import connect

from crdtsync import Status
from crdtsync.core.protocol import (
    Ack,
    ChangeFrame,
    Conflict,
    Error,
    ErrorCode,
    Hello,
    Push,
    Rejected,
    Subscribe,
    Unresolvable,
    encode,
)
from crdtsync.core.record import RecordDoc
from tests.helpers.harness import (
    EXAMPLE_CONFIG,
    RawConnection,
    RelayHarness,
    TasksForPlannersOnly,
    Wire,
)
from tests.helpers.relay_process import SECRET, ServeProcess, free_port
from tests.helpers.updates import one_client, root_item, vs, vu
from tests.helpers.wire import (
    admin,
    assert_never_sent,
    change,
    delta_writing,
    push_one,
    raw_session,
)

SECRET_NAME = "Project Kingfisher"
SECRET_AMOUNT = Decimal("9191.9191")
SECRETS = [SECRET_NAME, str(SECRET_AMOUNT)]


# -- S1: retransmissions after compaction -----------------------------------------------


def edit_delta(
    relay: RelayHarness, record_id: str, values: dict[str, Any], client_id: int
) -> bytes:
    """An update writing ``values`` on top of the record as the relay holds it."""
    stored = relay.storage.get_record(record_id)
    assert stored is not None
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
    doc.apply_update(stored.state)
    before = doc.get_state()
    fields: pycrdt.Map[Any] = doc.get("fields", type=pycrdt.Map)
    with doc.transaction():
        for name, value in values.items():
            fields[name] = value
    return bytes(doc.get_update(before))


async def pushed(
    relay: RelayHarness, token: str, *changes: ChangeFrame, replica: str | None = None
) -> list[Ack]:
    async with raw_session(relay.url, token, replica=replica) as (raw, _backlog):
        verdicts = [await push_one(raw, c) for c in changes]
    assert all(isinstance(v, Ack) for v in verdicts), verdicts
    return verdicts


def compact_everything(relay: RelayHarness) -> int:
    """What ``crdtsync compact --through SEQ`` does, on a second connection."""
    storage = RelayStorage(relay.config.database)
    try:
        return storage.compact(storage.seq)
    finally:
        storage.close()


async def write_the_secret(relay: RelayHarness, token: str, record_id: str) -> None:
    delta = edit_delta(
        relay,
        record_id,
        {"Name": SECRET_NAME, "Amount": str(SECRET_AMOUNT)},
        client_id=int(uuid.uuid4().int % 2**50) + 1,
    )
    await pushed(relay, token, change(record_id, "Opportunity", "update", delta, base=2))


async def resend_and_look_around(
    relay: RelayHarness,
    token: str,
    replica: str,
    original: ChangeFrame,
    record_id: str,
    object_name: str,
) -> None:
    """The user who lost access re-sends their old change, pushes an edit with an old
    base, and resumes from every cursor: each answer is checked by the wire tap."""
    async with raw_session(relay.url, token, replica=replica) as (raw, _backlog):
        again = await push_one(raw, original)
        assert isinstance(again, Ack) and again.update == b"", again
        stale = edit_delta(relay, record_id, {"Name": "mine"}, client_id=424242)
        verdict = await push_one(raw, change(record_id, object_name, "update", stale, base=1))
        assert isinstance(verdict, Unresolvable) and verdict.reason == "forbidden", verdict
    for cursor in range(relay.storage.seq + 1):
        async with raw_session(relay.url, token, cursor) as (_raw, _backlog):
            pass


@pytest.mark.parametrize("way", ["set_owner", "unshare"])
async def test_a_retransmission_after_compaction_returns_nothing_the_user_lost_access_to(
    relay: RelayHarness, wire: Wire, way: str
) -> None:
    account, deal = f"acc-{uuid.uuid4().hex}", f"deal-{uuid.uuid4().hex}"
    create_account = change(account, "Account", "create", delta_writing({"Name": "Acme"}))
    create_deal = change(
        deal,
        "Opportunity",
        "create",
        delta_writing({"Name": "Deal", "Account": account, "Stage": "Proposal"}),
    )
    await pushed(relay, relay.token("alice"), create_account, create_deal, replica="alice-1")
    async with admin(relay) as root:
        if way == "set_owner":  # alice, who created it, may no longer read it
            await root.set_owner(deal, "bob")
            loser, original, writer = "alice", create_deal, "bob"
        else:  # bob edited it under a share, then the share went
            await root.share(deal, "bob", access="edit")
            delta = edit_delta(relay, deal, {"Stage": "Qualification"}, client_id=515151)
            original = change(deal, "Opportunity", "update", delta, base=2)
            await pushed(relay, relay.token("bob"), original, replica="bob-1")
            await root.unshare(deal, "bob")
            loser, writer = "bob", "alice"
    await write_the_secret(relay, relay.token(writer), deal)
    assert compact_everything(relay) > 0

    replica = f"{loser}-1"
    await resend_and_look_around(relay, relay.token(loser), replica, original, deal, "Opportunity")

    assert_never_sent(wire.to(loser), secrets=SECRETS)


async def test_a_retransmission_after_compaction_returns_nothing_of_an_object_no_role_reads_now(
    tmp_path: Path, wire: Wire
) -> None:
    relay = TasksForPlannersOnly(tmp_path)
    await relay.start()
    try:
        planner = relay.server.authority.issue("alice", roles=["planner"])
        task = f"task-{uuid.uuid4().hex}"
        create_task = change(task, "Task", "create", delta_writing({"Subject": "Plan"}))
        await pushed(relay, planner, create_task, replica="alice-1")
        bob_planner = relay.server.authority.issue("bob", roles=["planner"])
        delta = edit_delta(relay, task, {"Subject": SECRET_NAME}, client_id=616161)
        await pushed(relay, bob_planner, change(task, "Task", "update", delta, base=1))
        assert compact_everything(relay) > 0

        no_longer = relay.server.authority.issue("alice")  # the planner role taken away
        async with raw_session(relay.url, no_longer, replica="alice-1") as (raw, _backlog):
            again = await push_one(raw, create_task)
            assert isinstance(again, Ack) and again.update == b"", again
        for cursor in range(3):
            async with raw_session(relay.url, no_longer, cursor) as (_raw, _backlog):
                pass
        assert_never_sent(wire.to("alice")[2:], secrets=[SECRET_NAME])  # after the first push
    finally:
        await relay.stop()


async def test_a_retransmission_by_a_user_who_may_still_read_gets_the_state_after_compaction(
    relay: RelayHarness,
) -> None:
    """The control: what the fix must keep working (the replica needs the dropped update)."""
    account = f"acc-{uuid.uuid4().hex}"
    create_account = change(account, "Account", "create", delta_writing({"Name": "Acme"}))
    await pushed(relay, relay.token("alice"), create_account, replica="alice-1")
    assert compact_everything(relay) == 1
    [again] = await pushed(relay, relay.token("alice"), create_account, replica="alice-1")
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(again.update)
    assert doc.get("fields", type=pycrdt.Map).to_py()["Name"] == "Acme"


# -- S2: secrets ------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["change-me", "secret", "", "short but not empty", "x" * 31])
def test_a_relay_config_with_a_placeholder_or_short_secret_is_refused(
    tmp_path: Path, secret: str
) -> None:
    toml = EXAMPLE_CONFIG.read_text().replace("[server]\n", f'[server]\nsecret = "{secret}"\n')
    path = tmp_path / "app.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=r"\[server\] secret"):
        RelayConfig.from_toml(path, database=str(tmp_path / "relay.sqlite3"))


def test_a_short_secret_in_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRDTSYNC_SECRET", "change-me")
    with pytest.raises(ConfigError, match="placeholder"):
        RelayConfig.from_toml(EXAMPLE_CONFIG, database=str(tmp_path / "relay.sqlite3"))


def test_serve_with_a_placeholder_secret_exits_with_one_line(tmp_path: Path) -> None:
    toml = EXAMPLE_CONFIG.read_text().replace("[server]\n", '[server]\nsecret = "change-me"\n')
    config = tmp_path / "app.toml"
    config.write_text(toml)
    env = {k: v for k, v in os.environ.items() if k != "CRDTSYNC_SECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "crdtsync", "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert "placeholder 'change-me'" in line and "Traceback" not in done.stderr
    assert not (tmp_path / "crdtsync.sqlite3").exists()


@pytest.fixture
def own_secret_relay(tmp_path: Path) -> Any:
    process = ServeProcess(tmp_path / "relay.sqlite3", free_port(), secret=None)
    process.start()
    yield process
    process.stop()


async def hello_with(process: ServeProcess, token: str) -> object:
    async with connect(process.url) as websocket:
        raw = RawConnection(websocket)
        await raw.send(Hello((2,), token, f"r-{uuid.uuid4().hex}"))
        return await raw.receive()


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # on purpose
async def test_a_relay_without_a_secret_makes_its_own_and_refuses_placeholder_tokens(
    own_secret_relay: ServeProcess,
) -> None:
    secret_file = Path(f"{own_secret_relay.database}.secret")
    mode = stat.S_IMODE(secret_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32

    for placeholder in ("change-me", "secret", "a" * 40):
        forged = jwt.encode({"sub": "root", "admin": True}, placeholder, algorithm="HS256")
        refused = await hello_with(own_secret_relay, forged)
        assert isinstance(refused, Error) and refused.code is ErrorCode.AUTH_FAILED, refused

    # The token command finds the relay's secret beside its database.
    env = {k: v for k, v in os.environ.items() if k != "CRDTSYNC_SECRET"}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "crdtsync", "token", "--config", str(EXAMPLE_CONFIG)),
            *("--db", str(own_secret_relay.database), "--user", "alice"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    welcome = await hello_with(own_secret_relay, done.stdout.strip())
    assert not isinstance(welcome, Error), welcome
    assert getattr(welcome, "user", None) == "alice"


async def test_two_processes_creating_the_secret_at_once_agree(tmp_path: Path) -> None:
    config = RelayConfig.from_toml(EXAMPLE_CONFIG, database=str(tmp_path / "relay.sqlite3"))
    secrets = await asyncio.gather(*(asyncio.to_thread(config.signing_secret) for _ in range(8)))
    assert len(set(secrets)) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "relay.sqlite3.secret"]  # no drafts left


# -- S9: judged by effect, not by the parser's prediction ------------------------------

BOB_CLIENT = 2**53 - 2  #: above the relay's own (random 53-bit) id: its Owner write loses to bob's


async def owner_smuggle(relay: RelayHarness) -> tuple[str, ChangeFrame]:
    """bob creates an Account writing Name (clock 0) then Owner = bob (clock 1); an
    administrator gives it to alice. Returns it and bob's smuggling update: one struct
    from clock 1 (known), two values long, keyed Name. The parser sees a write of Name;
    yrs keeps only the unknown second value, re-attached after bob's Owner item: a write
    of Owner = "bob"."""
    account = f"acc-{uuid.uuid4().hex}"
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=BOB_CLIENT)
    fields: pycrdt.Map[Any] = doc.get("fields", type=pycrdt.Map)
    with doc.transaction():
        fields["Name"] = "Bob's"
        fields["Owner"] = "bob"
    create = change(account, "Account", "create", bytes(doc.get_update()))
    await pushed(relay, relay.token("bob"), create, replica="bob-1")
    async with admin(relay) as root:
        await root.set_owner(account, "alice")
    content = vu(2) + b"\x77" + vs("x") + b"\x77" + vs("bob")  # ContentAny ["x", "bob"]
    delta = one_client(BOB_CLIENT, 1, [root_item(8, content, root="fields", key="Name")])
    return account, change(account, "Account", "update", delta, base=2)


def stored_owner(relay: RelayHarness, record_id: str) -> object:
    stored = relay.storage.get_record(record_id)
    assert stored is not None
    spec = relay.config.schema.objects["Account"]
    return RecordDoc.from_update(spec, stored.state).read().get("Owner")


async def test_a_struct_re_sending_known_clocks_cannot_smuggle_a_write_of_the_owner(
    relay: RelayHarness,
) -> None:
    account, smuggle = await owner_smuggle(relay)
    async with raw_session(relay.url, relay.token("bob"), replica="bob-1") as (raw, _backlog):
        verdict = await push_one(raw, smuggle)
    assert isinstance(verdict, Rejected) and verdict.code is ErrorCode.INVALID_UPDATE, verdict
    assert "re-sends operations the record already has" in verdict.message
    await relay.stop()
    await relay.start()  # what is stored, not what a cache holds
    assert stored_owner(relay, account) == "alice"


async def test_a_field_changed_by_the_apply_but_not_named_by_the_update_is_refused(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second line of defence alone: with the overlap check out of the way, the
    change the apply made to Owner, which the update does not name, is refused."""
    monkeypatch.setattr(merge, "_known_operations_resent", lambda ranges, index: None)
    account, smuggle = await owner_smuggle(relay)
    async with raw_session(relay.url, relay.token("bob"), replica="bob-1") as (raw, _backlog):
        verdict = await push_one(raw, smuggle)
    assert isinstance(verdict, Rejected) and verdict.code is ErrorCode.INVALID_UPDATE, verdict
    assert "changed fields its operations do not name: Owner" in verdict.message
    await relay.stop()
    await relay.start()
    assert stored_owner(relay, account) == "alice"


# -- S10: content a record is never made of -------------------------------------------

#: (name, content ref, content bytes) of each Yjs content type a record does not use
FOREIGN_CONTENT = [
    ("json", 2, vu(0) + vs('"x"')),  # yrs reads count + 1 strings
    ("binary", 3, vs(b"\x00\x01")),
    ("embed", 5, vs('{"a": 1}')),
    ("format", 6, vs("bold") + vs("true")),
    ("doc", 9, vs("guid-1") + b"\x76\x00"),  # options: an empty any map
    ("type-map", 7, b"\x01"),  # a Y.Map where a plain value belongs
    ("type-array", 7, b"\x00"),
    ("type-xml-text", 7, b"\x06"),
]


@pytest.mark.parametrize(
    ("name", "ref", "content"), FOREIGN_CONTENT, ids=[c[0] for c in FOREIGN_CONTENT]
)
async def test_content_a_record_never_holds_is_refused_and_the_record_still_loads(
    relay: RelayHarness, name: str, ref: int, content: bytes
) -> None:
    account = f"acc-{uuid.uuid4().hex}"
    create = change(account, "Account", "create", delta_writing({"Name": "Acme"}))
    await pushed(relay, relay.token("bob"), create, replica="bob-1")
    client = 888_001
    delta = one_client(client, 0, [root_item(ref, content, root="fields", key="Website")])
    async with raw_session(relay.url, relay.token("bob"), replica="bob-1") as (raw, _backlog):
        verdict = await push_one(raw, change(account, "Account", "update", delta, base=1))
    assert isinstance(verdict, Rejected) and verdict.code is ErrorCode.INVALID_UPDATE, verdict
    assert "not part of a record" in verdict.message

    await relay.stop()
    await relay.start()  # the stored state loads, and takes a plain edit
    good = edit_delta(relay, account, {"Website": "acme.example"}, client_id=client + 1)
    [ack] = await pushed(
        relay, relay.token("bob"), change(account, "Account", "update", good, base=1)
    )
    assert ack.version == 2


# -- S5: one relay per database -----------------------------------------------------------


def serve_once(database: Path, port: int) -> subprocess.CompletedProcess[str]:
    """``crdtsync serve`` that is expected to stop at once."""
    env = {**os.environ, "CRDTSYNC_SECRET": SECRET}
    return subprocess.run(
        [
            *(sys.executable, "-m", "crdtsync", "serve", "--config", str(EXAMPLE_CONFIG)),
            *("--db", str(database), "--port", str(port)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_a_second_relay_on_a_database_in_use_exits_at_once_naming_it(
    tmp_path: Path,
) -> None:
    first = ServeProcess(tmp_path / "relay.sqlite3", free_port())
    first.start()
    try:
        second = serve_once(first.database, free_port())
        assert second.returncode == 2
        [line] = second.stderr.splitlines()
        assert line.startswith("crdtsync: error: ") and str(first.database) in line
        assert "in use by another relay" in line and "Traceback" not in second.stderr
        async with first.client("alice", tmp_path / "alice.sqlite3") as alice:
            alice.create("Account", {"Name": "Still served"})
            await alice.sync(timeout=10)  # the first relay carries on
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)  # the OS drops the lock with the process
        first.process.wait()
        first.start()
        assert first.get("/healthz") == (200, "ok\n")
    finally:
        first.stop()


def test_a_relay_that_cannot_listen_leaves_no_database_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        database = tmp_path / "never.sqlite3"
        result = serve_once(database, taken.getsockname()[1])
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr and "Traceback" not in result.stderr
    assert not database.exists()
    assert not Path(f"{database}-wal").exists()


# -- S11: attacker data is never shown unbounded ------------------------------------------


async def test_a_first_frame_with_a_deeply_nested_type_gets_a_clear_error_and_harms_nothing(
    relay: RelayHarness, caplog: pytest.LogCaptureFixture
) -> None:
    nested: object = "hello"
    for _ in range(1000):
        nested = [nested]
    async with connect(relay.url) as websocket:
        raw = RawConnection(websocket)
        await raw.send(msgpack.packb({"type": nested}))
        error = await raw.receive()
        assert isinstance(error, Error) and error.fatal, error
        assert (error.code, error.message) == (
            ErrorCode.UNKNOWN_FRAME_TYPE,
            "unknown frame type a list",
        )
        await websocket.wait_closed()
        assert websocket.close_code == 1002
    [ack] = await pushed(
        relay,
        relay.token("bob"),
        change("acc-after", "Account", "create", delta_writing({"Name": "A"})),
    )
    assert ack.version == 1  # the relay carries on
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- S12: zero-length structs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "struct",
    [root_item(4, vs(""), root="fields", key="Name"), b"\x00" + vu(0)],
    ids=["empty-item", "empty-gc"],
)
async def test_a_zero_length_struct_is_refused_and_binds_no_client_id(
    relay: RelayHarness, struct: bytes
) -> None:
    account = f"acc-{uuid.uuid4().hex}"
    create = change(account, "Account", "create", delta_writing({"Name": "Acme"}))
    await pushed(relay, relay.token("bob"), create, replica="bob-1")
    stranger = 999_001
    delta = one_client(stranger, 0, [struct])
    async with raw_session(relay.url, relay.token("bob"), replica="bob-1") as (raw, _backlog):
        verdict = await push_one(raw, change(account, "Account", "update", delta, base=1))
    assert isinstance(verdict, Rejected) and verdict.code is ErrorCode.INVALID_UPDATE, verdict
    assert "of length 0" in verdict.message
    assert relay.storage.client_id_owner(stranger) is None
    assert relay.storage.get_record(account).version == 1  # type: ignore[union-attr]


# -- S7: a conflict shows nothing from before the user could read the record ----------------


async def test_a_conflict_never_shows_a_value_from_before_the_user_gained_access(
    relay: RelayHarness, wire: Wire
) -> None:
    account, deal = f"acc-{uuid.uuid4().hex}", f"deal-{uuid.uuid4().hex}"
    secret_then = "1111.11"
    await pushed(
        relay,
        relay.token("alice"),
        change(account, "Account", "create", delta_writing({"Name": "Acme"})),
        change(
            deal,
            "Opportunity",
            "create",
            delta_writing(
                {"Name": "Deal", "Account": account, "Stage": "Proposal", "Amount": secret_then}
            ),
        ),
        replica="alice-1",
    )  # versions 1, 2
    async with admin(relay) as root:
        amount_2 = edit_delta(relay, deal, {"Amount": "2222.22"}, client_id=121212)
        await pushed(
            relay, relay.token("alice"), change(deal, "Opportunity", "update", amount_2, base=2)
        )
        await root.share(deal, "bob", access="edit")  # version 4: bob may read from here
    amount_3 = edit_delta(relay, deal, {"Amount": "3333.33"}, client_id=131313)
    await pushed(
        relay, relay.token("alice"), change(deal, "Opportunity", "update", amount_3, base=4)
    )

    mine = edit_delta(relay, deal, {"Amount": "4444.44"}, client_id=141414)
    claim = attrs.evolve(
        change(deal, "Opportunity", "update", mine, base=1), field_bases={"Amount": 1}
    )  # bob claims a base from before the share
    async with raw_session(relay.url, relay.token("bob"), replica="bob-1") as (raw, _backlog):
        verdict = await push_one(raw, claim)
    assert isinstance(verdict, Conflict), verdict
    [amount] = verdict.conflicts
    assert (amount.field, amount.base, amount.theirs) == ("Amount", "2222.22", "3333.33")
    assert_never_sent(wire.to("bob"), secrets=[secret_then])


# -- S3: no one connection holds up the others ------------------------------------------


async def canary(url: str, token: str, stop: asyncio.Event) -> list[float]:
    """Push a small edit every 50 ms until ``stop``; return each ack's latency (s)."""
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    async with raw_session(url, token, replica="canary-1") as (raw, _backlog):
        record = f"acc-canary-{uuid.uuid4().hex}"
        doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=565656)
        fields: pycrdt.Map[Any] = doc.get("fields", type=pycrdt.Map)
        fields["Name"] = "Canary"
        await push_one(raw, change(record, "Account", "create", bytes(doc.get_update())))
        version = 1
        n = 0
        while not stop.is_set():
            before = doc.get_state()
            fields["Employees"] = n
            n += 1
            edit = change(record, "Account", "update", bytes(doc.get_update(before)), base=version)
            started = loop.time()
            verdict = await push_one(raw, edit)
            latencies.append(loop.time() - started)
            assert isinstance(verdict, Ack), verdict
            await asyncio.sleep(0.05)
    return latencies


def tiny_creates(count: int) -> Push:
    delta = delta_writing({"Name": "x"}, client_id=7_000)  # one client's first op, per record
    return Push(tuple(change(f"r{n}", "Account", "create", delta) for n in range(count)))


async def test_a_huge_push_and_a_subscribe_flood_do_not_hold_up_another_client(
    tmp_path: Path,
) -> None:
    served = ServeProcess(tmp_path / "relay.sqlite3", free_port())
    served.start()
    try:
        frame = encode(tiny_creates(33_000))  # built before the clock starts
        assert 3_000_000 < len(frame) < 4 * 1024 * 1024  # under the size limit
        stop = asyncio.Event()
        watch = asyncio.create_task(canary(served.url, served.token("carol"), stop))
        await asyncio.sleep(0.3)
        # mallory never reads most answers: no waiting on a close handshake behind them
        async with connect(served.url, max_size=None, close_timeout=0.2) as websocket:
            raw = RawConnection(websocket)
            await raw.handshake(served.token("mallory"), replica="mallory-1")
            await raw.send(frame)
            # mallory is subscribed: the canary's changes may be fanned out to her first
            refused = (await raw.receive_until(Error, timeout=10))[-1]
            assert isinstance(refused, Error) and refused.code is ErrorCode.FRAME_TOO_LARGE
            assert "at most 500 per frame" in refused.message
            for _ in range(300):  # each subscribe would list every record again
                await raw.send(Subscribe(("Account", "Contact", "Opportunity", "Task"), 0))
            answers = await raw.receive_until(Error, timeout=10)
            assert "still catching up" in answers[-1].message  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)
        stop.set()
        latencies = await watch
        assert len(latencies) >= 5
        assert max(latencies) < 1.0, latencies  # loosely: nobody waited seconds
    finally:
        served.stop()


# -- S4: no record can keep a new device from loading ---------------------------------------


async def test_a_record_cannot_grow_past_its_cap_and_a_new_device_loads_everything(
    tmp_path: Path,
) -> None:
    relay = RelayHarness(tmp_path, max_record_bytes=64 * 1024)
    await relay.start()
    try:
        alice = relay.client("alice")
        async with alice:
            other = alice.create("Account", {"Name": "Unrelated"})
            poison = alice.create("Account", {"Name": "Growing", "Description": ""})
            await alice.sync()
            text = ""
            while True:
                text += "lorem ipsum dolor sit amet " * 800  # ~21 KB more each time
                alice.update(poison, {"Description": text})
                await alice.sync()
                if alice.pending():
                    break
                assert len(text) < 200_000, "the cap never applied"
            [change_] = alice.pending()
            assert change_.status is Status.CONFLICT and change_.problem is not None
            [error] = change_.problem.errors
            assert "more than the 65,536 a record may hold" in error.message
            alice.dismiss(poison)
        bob = relay.client("bob")  # a new device
        async with bob:
            await bob.sync()
            assert {r.id for r in bob.records("Account")} == {other, poison}
            kept = bob.get(poison)
            assert kept is not None and len(kept.fields["Description"]) < len(text)
    finally:
        await relay.stop()


async def test_a_record_too_large_to_send_is_left_out_and_the_rest_arrives(
    relay: RelayHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A record stored before records had a cap (here: one over a lowered frame bound)."""
    monkeypatch.setattr(backlog_module, "BACKLOG_MAX_FRAME_BYTES", 50_000)
    alice = relay.client("alice")
    async with alice:
        big = alice.create("Account", {"Name": "Big", "Description": "x" * 60_000})
        small = [alice.create("Account", {"Name": f"Small {n}"}) for n in range(3)]
        await alice.sync()
    bob = relay.client("bob")
    async with bob:
        await bob.sync()
        assert bob.online
        assert {r.id for r in bob.records("Account")} == set(small)
    assert any(big in r.getMessage() and "too large" in r.getMessage() for r in caplog.records)
