"""The shadow hook in a real relay: `hsmproxy wrap --wal-dir` between the lightningd harness and
the simulated validating signer (real processes, fd passing, real secp256k1 signatures), and
`hsmproxy state` reading the WAL. Each divergence kind comes from the exchange that causes it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
import trio
from coincurve import PrivateKey
from prometheus_client import generate_latest

import wire
from hsmproxy import cli
from hsmproxy.assembly import build_hooks
from proxy.addons.metrics import Metrics
from proxy.addons.shadow_hook import ShadowHook
from proxy.addons.trace import read_trace
from proxy.core.digest import digest_of_request
from proxy.core.hooks import (
    CONN_CLOSED,
    REPLY_AFTER,
    REPLY_BEFORE,
    REQUEST_BEFORE,
    ROLE_CLIENT,
    ROLE_MASTER,
    ConnContext,
    Exchange,
    Refuse,
)
from tests import ld_harness as h
from tests.proxy.addons.wrapped_signer import PERMISSIVE, finish, open_channel, start
from tests.proxy.core.shadow_vectors import channel_messages, peer_id, request
from sim.node import EXIT_OK, EXIT_REFUSED
from tests.sim.helpers import sim_node, summary

pytestmark = pytest.mark.timeout(90)

CHANNELD = "client:1/channeld"
VALIDATING = "policy-commitment-retry-same:error,policy-*:warn"  # VLS's retry-same, nothing else


def sign(ld, conn=CHANNELD, index=1, **changes) -> str | None:
    reply = ld.request(conn, wire.encode(request("hsmd_sign_remote_commitment_tx", index, **changes)))
    return wire.decode(reply).name if reply is not None else None


def state(wal: Path) -> dict:
    out = StringIO()
    with redirect_stdout(out):
        assert cli.main(["state", "--wal-dir", str(wal), "--json"]) == 0
    return json.loads(out.getvalue())


def events(st: dict, kind: str) -> list[dict]:
    return [e for e in st["divergences"] if e["kind"] == kind]


def recorded(wal: Path, kind: str, timeout: float = 10.0) -> list[dict]:
    """The ``kind`` events once the WAL has one. The proxy records a connection's end right after
    it closes that connection, so the node can see the EOF a moment before the record is durable."""
    deadline = time.monotonic() + timeout
    while not (found := events(state(wal), kind)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def test_every_divergence_kind_shows_up_in_state(tmp_path):
    wal = tmp_path / "wal"
    ld = start(tmp_path, PERMISSIVE, "--wal-dir", str(wal), "--trace", str(tmp_path / "trace"))
    try:
        open_channel(ld)
        st = state(wal)  # read while the proxy runs
        (channel,) = st["channels"]
        assert (channel["peer_id"], channel["dbid"]) == (peer_id().hex(), 1)
        assert (channel["next_counterparty_commit_num"], channel["next_counterparty_revoke_num"],
                channel["next_holder_commit_num"]) == (2, 1, 2)
        assert st["divergences"] == []

        assert sign(ld, feerate=999) == "hsmd_sign_tx_reply"  # the split-brain retry, signed
        assert sign(ld, index=0, feerate=998) == "hsmd_sign_tx_reply"  # an older index
        assert sign(ld, index=1, commit_num=5) == "hsmd_sign_tx_reply"  # a jump
        wrong = request("hsmd_validate_revocation", 9).fields["per_commitment_secret"]
        ld.request(CHANNELD, wire.encode(request("hsmd_validate_revocation", 0, revoke_num=4,
                                                 per_commitment_secret=wrong)))
        # channeld restarts: a new client for dbid 1 whose first request is an old index
        ld.client_hsmfd("client:1/again", wire.encode(wire.build("hsmd_client_hsmfd", id=peer_id(), dbid=1,
                                                                   permissions=447)))
        assert sign(ld, conn="client:1/again", index=0) == "hsmd_sign_tx_reply"
        finish(ld)
    finally:
        ld.close()

    st = state(wal)
    (retry,) = events(st, "retry_changed")
    assert retry["index"] == 1 and retry["status"] == "confirmed"
    assert retry["shadow_digest"] != retry["request_digest"] and None not in (retry["shadow_digest"], retry["request_digest"])
    doubles = events(st, "double_signed")
    assert [d["index"] for d in doubles] == [1] and doubles[0]["status"] == "confirmed"
    assert [e["index"] for e in events(st, "index_regressed")] == [0, 0]
    assert [e["index"] for e in events(st, "index_skipped")] == [5]
    assert [e["index"] for e in events(st, "revocation_mismatch")] == [4]
    (behind,) = events(st, "node_behind_after_restart")
    assert behind["index"] == 0 and behind["peer_id"] == peer_id().hex() and behind["dbid"] == 1
    assert events(st, "signer_rejected") == []
    assert st["channels"][0]["next_counterparty_commit_num"] == 6
    traced = {(r["event"]["kind"], r["event"]["status"]) for r in read_trace(str(tmp_path / "trace"))
              if r["kind"] == "divergence"}
    assert {(e["kind"], "confirmed") for e in st["divergences"]} <= traced
    assert ("retry_changed", "predicted") in traced


def test_a_validating_signer_refuses_and_the_guard_refuses_first(tmp_path):
    wal = tmp_path / "wal"
    ld = start(tmp_path, VALIDATING, "--wal-dir", str(wal))
    try:
        open_channel(ld)
        assert sign(ld, feerate=999) is None  # VLS: policy-commitment-retry-same, client closed
        ld.drain_status(0.3)
        finish(ld)
    finally:
        ld.close()
    st = state(wal)
    (rejected,) = events(st, "signer_rejected")
    assert rejected["index"] == 1 and "retry-same" in rejected["detail"]
    assert [e["status"] for e in events(st, "double_signed")] == ["refuted"]
    assert [e["status"] for e in events(st, "retry_changed")] == ["confirmed"]

    # The same exchange with --guard and a signer that does not validate: the proxy refuses.
    guarded = tmp_path / "guarded"
    guarded.mkdir()
    ld = start(guarded, PERMISSIVE, "--wal-dir", str(guarded / "wal"), "--guard")
    try:
        open_channel(ld)
        assert sign(ld) == "hsmd_sign_tx_reply"  # an identical retry passes
        assert sign(ld, feerate=999) is None
        ld.drain_status(0.3)
        bad = [wire.decode(f) for f in ld.status_frames() if f[:2] == b"\x03\xe8"]
        assert len(bad) == 1 and "--guard" in bad[0].fields["description"]
        assert bad[0].fields["id"] == peer_id()
        finish(ld)
    finally:
        ld.close()
    st = state(guarded / "wal")
    assert [e["status"] for e in events(st, "double_signed")] == ["prevented"]
    assert st["channels"][0]["current_counterparty_digest"] == retry_digest_of_capture()


def retry_digest_of_capture() -> str:
    return digest_of_request(request("hsmd_sign_remote_commitment_tx", 1).fields, with_point=True).hex()


def test_sigkilled_proxy_keeps_what_the_node_was_told(tmp_path):
    wal = tmp_path / "wal"
    ld = start(tmp_path, PERMISSIVE, "--wal-dir", str(wal))
    try:
        open_channel(ld)
        assert sign(ld, feerate=999) == "hsmd_sign_tx_reply"
        wrapper_pid = ld.proc.pid
        os.kill(wrapper_pid, signal.SIGKILL)
        ld.proc.wait(timeout=10)
    finally:
        ld.close()
    st = state(wal)
    assert st["channels"][0]["next_counterparty_commit_num"] == 2
    assert [e["status"] for e in events(st, "double_signed")] == ["confirmed"]
    # The table view works on the same directory, as a separate process.
    table = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "state", "--wal-dir", str(wal)],
                           capture_output=True, text=True, env={**h.child_env(), "COLUMNS": "200"}, timeout=30)
    assert table.returncode == 0 and "double_signed" in table.stdout and "retry_changed" in table.stdout


def test_state_names_a_missing_directory(tmp_path, capsys):
    assert cli.main(["state", "--wal-dir", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_unusable_wal_dir_stops_the_proxy_with_a_clear_message(tmp_path, capsys):
    wal = tmp_path / "wal"
    wal.mkdir()
    (wal / "wal-0.log").write_bytes(b"SQLite format 3\x00" + bytes(16))
    with pytest.raises(SystemExit) as stopped:
        build_hooks(argparse.Namespace(parse=True, wal_dir=str(wal), guard=False, trace=None))
    assert stopped.value.code == 2
    assert f"hsmproxy: --wal-dir {wal}: wal-0.log: not an hsmproxy WAL file" in capsys.readouterr().err


def test_sigkill_of_the_real_proxy_at_random_moments_loses_no_answer(tmp_path):
    """`hsmproxy wrap --wal-dir` killed with SIGKILL at random moments while the harness signs
    commitment after commitment: every signature the node received is in the recovered WAL."""
    rng = random.Random(4)
    wal = tmp_path / "wal"
    base = request("hsmd_sign_remote_commitment_tx", 1)
    acked: dict[int, bytes] = {}

    def point(n):
        return PrivateKey(hashlib.sha256(b"peer secret %d" % n).digest()).public_key.format()

    def workload(ld, start_index):
        n = start_index
        while True:
            fields = dict(base.fields, commit_num=n, remote_per_commit=point(n), feerate=rng.randrange(253, 10**6))
            body = wire.encode(wire.build("hsmd_sign_remote_commitment_tx", **fields))
            if ld.request(CHANNELD, body) is None:
                return
            acked[n] = digest_of_request(wire.decode(body).fields, with_point=True)  # the node has it
            n += 1

    for iteration in range(4):
        ld = start(tmp_path, PERMISSIVE, "--wal-dir", str(wal))
        try:
            open_channel(ld)
            worker = threading.Thread(target=workload, args=(ld, max(acked, default=1) + 1), daemon=True)
            worker.start()
            time.sleep(rng.uniform(0.2, 1.0))
            os.kill(ld.proc.pid, signal.SIGKILL)
            ld.proc.wait(timeout=10)
            for sock in (ld.master, *ld.clients.values()):
                sock.close()  # the signer child sees EOF and exits; the worker's read fails
            worker.join(timeout=20)
            assert not worker.is_alive()
        finally:
            ld.close()
        (channel,) = state(wal)["channels"]
        last = max(acked)
        assert channel["next_counterparty_commit_num"] >= last + 1, (iteration, last, channel)
        if channel["next_counterparty_commit_num"] == last + 1:
            assert channel["current_counterparty_digest"] == acked[last].hex()
    assert len(acked) >= 4


async def test_metrics_count_divergences_guard_refusals_and_wal_work(tmp_path):
    """The hook reports to the real Prometheus registry of proxy.addons.metrics."""
    metrics = Metrics()
    hook = ShadowHook.open(str(tmp_path / "wal"), guard=True)
    hook.attach_metrics(metrics)
    ctx = ConnContext(conn_id=1, role=ROLE_CLIENT, peer_id=peer_id(), dbid=1, permissions=447)
    signed = wire.encode(wire.build("hsmd_sign_tx_reply", sig=bytes(64) + b"\x01"))
    with trio.fail_after(10):
        for seq, body in enumerate([wire.encode(request("hsmd_sign_remote_commitment_tx", 0)),
                                    wire.encode(request("hsmd_sign_remote_commitment_tx", 0, feerate=999))]):
            ex = Exchange(ctx, seq, body, wire.decode(body))
            verdict = await hook.on_request(ex, REQUEST_BEFORE)
            if verdict is None:
                ex.reply_raw, ex.reply = signed, wire.decode(signed)
                await hook.on_reply(ex, REPLY_BEFORE)
    assert isinstance(verdict, Refuse)
    hook.close()
    text = generate_latest(metrics.registry).decode()
    assert 'hsmproxy_divergences_total{kind="double_signed"} 1.0' in text
    assert 'hsmproxy_guard_refusals_total{kind="double_signed"} 1.0' in text
    assert "hsmproxy_wal_appends_total 4.0" in text  # intent, outcome, intent, guard outcome
    assert "hsmproxy_channels_tracked 1.0" in text


# --- issue 13 §3: a warning at the moment of the crash --------------------------------------------

SIGN_2 = request("hsmd_sign_remote_commitment_tx", 1, commit_num=2)  # after the capture's revocation of 0


def rehsmfd(ld: h.Lightningd, name: str) -> None:
    """channeld comes back: a new client connection for dbid 1."""
    ld.client_hsmfd(name, wire.encode(wire.build("hsmd_client_hsmfd", id=peer_id(), dbid=1, permissions=447)))


def test_a_crash_in_the_window_is_flagged_at_once_and_resolved_by_the_identical_retry(tmp_path):
    """The signer signs commitment 2; the proxy cuts the client before the node hears of it (the
    signer acted, the node never did): flagged at once, with the channel, 2, and "not sent";
    channeld comes back and signs 2 again with the same contents: resolved."""
    wal, trace = tmp_path / "wal", tmp_path / "trace"
    ld = start(tmp_path, PERMISSIVE, "--wal-dir", str(wal), "--trace", str(trace), "--enable-faults",
               "--faults=+hsmd_sign_remote_commitment_tx connection=client:1:02a8a0e038d28608#1 commit_num==2")
    try:
        open_channel(ld)
        assert ld.request(CHANNELD, wire.encode(SIGN_2)) is None  # the node never gets the signature
        assert ld.expect_eof(CHANNELD)
        (crash,) = recorded(wal, "crashed_in_window")  # while the proxy runs: recorded at once
        assert (crash["status"], crash["index"], crash["dbid"], crash["peer_id"]) == ("possible", 2, 1, peer_id().hex())
        assert crash["reply_forwarded"] is False and "had not been sent" in crash["detail"]
        assert crash["shadow_digest"] == digest_of_request(SIGN_2.fields, with_point=True).hex()
        rehsmfd(ld, "client:1/again")
        assert ld.request("client:1/again", wire.encode(SIGN_2)) is not None
        # One more exchange on that connection: the proxy has seen the signature leave by then.
        assert ld.request("client:1/again", wire.encode(request("hsmd_get_per_commitment_point", 2))) is not None
        st = state(wal)
        assert [(e["kind"], e["status"]) for e in st["divergences"]] == [("crashed_in_window", "resolved")]
        assert "the same contents" in st["divergences"][0]["detail"]
        finish(ld)  # the node goes away before the peer revoked 1: a crash in the window again
    finally:
        ld.close()
    st = state(wal)
    assert [(e["kind"], e["status"], e["reply_forwarded"]) for e in st["divergences"]] == [
        ("crashed_in_window", "resolved", False), ("crashed_in_window", "possible", True)]
    traced = [(r["event"]["kind"], r["event"]["status"]) for r in read_trace(str(trace)) if r["kind"] == "divergence"]
    assert traced == [("crashed_in_window", "possible"), ("crashed_in_window", "resolved"),
                      ("crashed_in_window", "possible")]
    table = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "state", "--wal-dir", str(wal)],
                           capture_output=True, text=True, env={**h.child_env(), "COLUMNS": "250"}, timeout=30)
    assert table.returncode == 0 and "crashed_in_window" in table.stdout and "resolved" in table.stdout


def test_the_node_dying_in_the_window_after_it_got_the_signature_is_flagged(tmp_path):
    """lightningd's master connection closes right after commitment 2's signature was sent to it,
    before the peer's revocation of 1: "sent", and a node that comes back changed confirms it."""
    wal = tmp_path / "wal"
    ld = start(tmp_path, PERMISSIVE, "--wal-dir", str(wal))
    try:
        open_channel(ld)
        assert ld.request(CHANNELD, wire.encode(SIGN_2)) is not None
        # One more exchange on that connection: the proxy has seen the signature leave by then.
        assert ld.request(CHANNELD, wire.encode(request("hsmd_get_per_commitment_point", 2))) is not None
        finish(ld)  # the node goes away (the signer exits with it)
    finally:
        ld.close()
    (crash,) = events(state(wal), "crashed_in_window")
    assert (crash["status"], crash["index"], crash["reply_forwarded"]) == ("possible", 2, True)
    assert "process ended" in crash["detail"] or "connection for this channel closed" in crash["detail"]

    # The node restarts with the same WAL, behind by one: it replays the channel up to 1 (the same
    # requests again) and signs 2 with other contents.
    ld = start(tmp_path, PERMISSIVE, "--wal-dir", str(wal))
    try:
        open_channel(ld)
        assert sign(ld, index=1, commit_num=2, feerate=999) == "hsmd_sign_tx_reply"
        finish(ld)
    finally:
        ld.close()
    st = state(wal)
    crash, again = events(st, "crashed_in_window")  # and the node left once more, after its new signature
    assert crash["status"] == "confirmed" and "retry_changed, double_signed" in crash["detail"]
    assert [e["status"] for e in events(st, "double_signed")] == ["confirmed"]
    assert again["status"] == "possible" and again["op_id"] != crash["op_id"]


def test_sim_node_killed_in_its_own_window_through_the_proxy(tmp_path):
    """The real processes: sim-node (which kills itself right after it received the signature of
    commitment 2 and before it saved it), `hsmproxy wrap`, sim-signer. The naive node comes back
    behind and re-signs 2 differently (confirmed; the validating signer refuses); the WAL node
    re-signs the same 2 (resolved)."""
    signer = h.write_script(tmp_path / "sim-signer", [f'exec "{sys.executable}" -m hsmproxy.cli sim-signer "$@"'])
    for discipline, status, exit_code in (("naive", "confirmed", EXIT_REFUSED), ("wal", "resolved", EXIT_OK)):
        data, wal = tmp_path / discipline, tmp_path / f"{discipline}-wal"
        data.mkdir()
        wrapper = h.write_script(tmp_path / f"wrap-{discipline}", [
            f'exec "{sys.executable}" -m hsmproxy.cli wrap --signer "{signer}" --wal-dir "{wal}" -- "$@"'])
        args = ("--updates", "3", "--discipline", discipline, "--signer", str(wrapper))
        crashed = sim_node(data, *args, "--crash-at", "after_sign_remote_before_persist:2")
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        (crash,) = recorded(wal, "crashed_in_window")  # the orphaned proxy may still be writing it
        # (reply_forwarded is not asserted here: the node dies a moment after reading the
        # signature, and the proxy may see that before it has noted the send as done.)
        assert (crash["status"], crash["index"]) == ("possible", 2), crash
        resumed = sim_node(data, *args)
        assert resumed.returncode == exit_code, resumed.stderr[-2000:]
        (crash,) = events(state(wal), "crashed_in_window")
        assert crash["status"] == status, crash
        if discipline == "wal":
            assert summary(resumed)["updates_completed"] == 3


async def test_metrics_and_listeners_see_the_crash_and_a_restarted_proxy_still_warns(tmp_path):
    """In the hook: the crash counts in hsmproxy_divergences_total{kind="crashed_in_window"} at
    once, the open-crash gauge is 1 until the node shows what it kept, and a proxy started on the
    same WAL (lightningd took the last one with it) reports the open crash from the start."""
    metrics, seen = Metrics(), []
    hook = ShadowHook.open(str(tmp_path / "wal"))
    hook.attach_metrics(metrics)
    hook.listeners.append(seen.append)
    ctx = ConnContext(conn_id=1, role=ROLE_CLIENT, peer_id=peer_id(), dbid=1, permissions=447)
    master = ConnContext(conn_id=0, role=ROLE_MASTER)
    signed = wire.encode(wire.build("hsmd_sign_tx_reply", sig=bytes(64) + b"\x01"))
    with trio.fail_after(10):
        for seq, index in enumerate((0, 1)):
            body = wire.encode(request("hsmd_sign_remote_commitment_tx", index))
            ex = Exchange(ctx, seq, body, wire.decode(body))
            assert await hook.on_request(ex, REQUEST_BEFORE) is None
            ex.reply_raw, ex.reply = signed, wire.decode(signed)
            await hook.on_reply(ex, REPLY_BEFORE)
            if index == 0:
                await hook.on_reply(ex, REPLY_AFTER)  # 1's signature never reaches the node
        await hook.on_connection(ctx, CONN_CLOSED)
        await hook.on_connection(master, CONN_CLOSED)  # the same crash: not flagged twice
    hook.close()
    assert [(e.kind, e.status, e.index, e.reply_forwarded) for e in seen] == [("crashed_in_window", "possible", 1, False)]
    text = generate_latest(metrics.registry).decode()
    assert 'hsmproxy_divergences_total{kind="crashed_in_window"} 1.0' in text
    assert "hsmproxy_crashed_in_window_open 1.0" in text
    assert 'hsmproxy_divergences_total{kind="double_signed"} 0.0' in text  # every kind is a series from the start
    assert "hsmproxy_wal_appends_total 5.0" in text  # two intents, two outcomes, the connection's end

    metrics = Metrics()
    hook = ShadowHook.open(str(tmp_path / "wal"), metrics=metrics)
    assert "hsmproxy_crashed_in_window_open 1.0" in generate_latest(metrics.registry).decode()
    again = ConnContext(conn_id=5, role=ROLE_CLIENT, peer_id=peer_id(), dbid=1, permissions=447)
    with trio.fail_after(10):
        body = wire.encode(request("hsmd_validate_revocation", 0))
        ex = Exchange(again, 0, body, wire.decode(body))
        await hook.on_request(ex, REQUEST_BEFORE)
        ex.reply_raw = wire.encode(wire.build("hsmd_validate_revocation_reply"))
        ex.reply = wire.decode(ex.reply_raw)
        await hook.on_reply(ex, REPLY_BEFORE)
    hook.close()
    text = generate_latest(metrics.registry).decode()
    assert "hsmproxy_crashed_in_window_open 0.0" in text
    assert [(e["kind"], e["status"]) for e in hook.divergences_jsonable()] == [("crashed_in_window", "resolved")]


async def test_a_connection_closing_outside_the_window_writes_nothing(tmp_path):
    hook = ShadowHook.open(str(tmp_path / "wal"))
    ctx = ConnContext(conn_id=1, role=ROLE_CLIENT, peer_id=peer_id(), dbid=1, permissions=447)
    written = hook.wal.store.index
    with trio.fail_after(10):
        await hook.on_connection(ctx, CONN_CLOSED)
        await hook.on_connection(ConnContext(conn_id=0, role=ROLE_MASTER), CONN_CLOSED)
    assert hook.wal.store.index == written  # no record, no sync: a connection's end costs nothing
    hook.close()
    assert state(tmp_path / "wal")["divergences"] == []
