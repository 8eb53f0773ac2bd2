"""SIGKILL a real process running the shadow hook (the code path the relay calls) at random
points, hundreds of times, and check that what the node was told survives.

Each forked child opens the hook on the WAL directory exactly as `hsmproxy wrap --wal-dir` does
(recovery, restart record), then plays several channels through ``on_request`` /
``on_reply`` with real hsmd messages (built from the capture's shapes): sign commitment N
with a fresh per-commitment point, then the peer revokes N-1 with the secret behind that
point. A reply is "forwarded to the node" (an ack on a pipe) only after ``on_reply`` returned,
which is when the relay would forward it.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import struct

import trio
from coincurve import PrivateKey
from prometheus_client import generate_latest

import wire
from proxy.addons.metrics import Metrics
from proxy.addons.shadow_hook import ShadowHook
from proxy.core.digest import digest_of_request
from proxy.core.hooks import REPLY_BEFORE, REQUEST_BEFORE, ROLE_CLIENT, ConnContext, Exchange, Refuse
from proxy.trio.shadow_recovery import recover
from tests.proxy.core.shadow_vectors import peer_id, request
from tests.crash_harness import run_and_sigkill

ACK = struct.Struct(">IQ32s")
CHANNELS = 4
ITERATIONS = 150
SIGNED = wire.encode(wire.build("hsmd_sign_tx_reply", sig=bytes(64) + b"\x01"))
REVOKED = wire.encode(wire.build("hsmd_validate_revocation_reply"))


def secret(dbid: int, n: int) -> bytes:
    return hashlib.sha256(b"per-commitment %d %d" % (dbid, n)).digest()


def point(dbid: int, n: int) -> bytes:
    return PrivateKey(secret(dbid, n)).public_key.format()


def feerate(dbid: int, n: int) -> int:
    # Deterministic per index: after a kill the node re-sends the same commitment, as a node
    # that writes its intent first does (different contents would be a possible double signature).
    return 253 + int.from_bytes(hashlib.sha256(b"%d/%d" % (dbid, n)).digest()[:3], "big")


def child(directory: str, ack_fd: int, seed: int) -> None:
    rng = random.Random(seed)
    base = request("hsmd_sign_remote_commitment_tx", 1)

    async def main():
        hook = ShadowHook.open(directory, checkpoint_every=rng.choice([30, 60, 1000]))

        async def exchange(ctx, seq, body, reply):
            ex = Exchange(ctx, seq, body, wire.decode(body))
            assert await hook.on_request(ex, REQUEST_BEFORE) is None
            await trio.sleep(0)  # the signer works
            ex.reply_raw, ex.reply = reply, wire.decode(reply)
            assert await hook.on_reply(ex, REPLY_BEFORE) is None

        async def channel(dbid):
            ctx = ConnContext(conn_id=dbid, role=ROLE_CLIENT, peer_id=peer_id(), dbid=dbid, permissions=447)
            ch = hook.shadow.channel(peer_id(), dbid)
            seq = 0
            while True:
                n = ch.next_counterparty_commit_num or 0
                seq += 1
                if n >= 2 and ch.next_counterparty_revoke_num < n - 1:  # the peer revokes n-2
                    body = wire.encode(wire.build("hsmd_validate_revocation", revoke_num=n - 2,
                                                  per_commitment_secret=secret(dbid, n - 2)))
                    await exchange(ctx, seq, body, REVOKED)
                    continue
                fields = dict(base.fields, commit_num=n, remote_per_commit=point(dbid, n), feerate=feerate(dbid, n))
                body = wire.encode(wire.build("hsmd_sign_remote_commitment_tx", **fields))
                await exchange(ctx, seq, body, SIGNED)
                os.write(ack_fd, ACK.pack(dbid, n, digest_of_request(wire.decode(body).fields, with_point=True)))

        async with trio.open_nursery() as nursery:
            for dbid in range(1, CHANNELS + 1):
                nursery.start_soon(channel, dbid)

    trio.run(main)


def run_once(directory: str, rng: random.Random, acked: dict) -> None:
    run_and_sigkill(child, directory, rng, acked, ACK, max_seconds=0.08)


def test_sigkilled_shadow_hook_keeps_every_answer_the_node_saw(tmp_path):
    rng = random.Random(0xC0FFEE)
    directory = str(tmp_path / "wal")
    os.mkdir(directory, 0o700)
    acked: dict = {}
    for _ in range(ITERATIONS):
        run_once(directory, rng, acked)
        shadow, _ = recover(directory, repair=True)
        for dbid, (n, digest) in acked.items():
            ch = shadow.channel(peer_id(), dbid)
            assert ch.next_counterparty_commit_num >= n + 1, (dbid, n, ch.next_counterparty_commit_num)
            if ch.next_counterparty_commit_num == n + 1:
                assert ch.current_counterparty_digest == digest
                assert ch.current_counterparty_point == point(dbid, n)
        # Honest traffic: the real secrets match the real points, nothing diverged, even across kills.
        assert shadow.events == [], shadow.events[:3]
    assert sum(n for n, _ in acked.values()) >= 2 * CHANNELS


def _killed_with_sign_2_in_flight(directory: str) -> None:
    """A child runs the hook on the WAL: the capture's channel up to the revocation of 0, then
    commitment 2's intent is durable (about to be forwarded) when the proxy is SIGKILLed."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            os.close(read_fd)

            async def main():
                hook = ShadowHook.open(directory)
                ctx = ConnContext(conn_id=1, role=ROLE_CLIENT, peer_id=peer_id(), dbid=1, permissions=447)
                for seq, (name, index, reply) in enumerate([
                        ("hsmd_sign_remote_commitment_tx", 0, SIGNED), ("hsmd_sign_remote_commitment_tx", 1, SIGNED),
                        ("hsmd_validate_revocation", 0, REVOKED)]):
                    body = wire.encode(request(name, index))
                    ex = Exchange(ctx, seq, body, wire.decode(body))
                    await hook.on_request(ex, REQUEST_BEFORE)
                    ex.reply_raw, ex.reply = reply, wire.decode(reply)
                    await hook.on_reply(ex, REPLY_BEFORE)
                body = wire.encode(request("hsmd_sign_remote_commitment_tx", 1, commit_num=2, feerate=300))
                assert await hook.on_request(Exchange(ctx, 3, body, wire.decode(body)), REQUEST_BEFORE) is None
                os.write(write_fd, b"!")  # durable in the WAL; the signer may or may not get it
                await trio.sleep_forever()

            trio.run(main)
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        assert select.select([read_fd], [], [], 30)[0] and os.read(read_fd, 1) == b"!"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)


def test_a_proxy_killed_between_the_intent_and_the_forward_makes_the_retry_possible_not_confirmed(tmp_path):
    """Issue 12 item 9: the node's changed retry of commitment 2 after the restart is a possible
    double signature (the signer may never have seen the first request), counted apart from the
    confirmed ones so that it does not page as critical; --guard still refuses it."""
    for guard in (False, True):
        directory = str(tmp_path / f"wal-{guard}")
        os.mkdir(directory, 0o700)
        _killed_with_sign_2_in_flight(directory)
        metrics = Metrics()
        hook = ShadowHook.open(directory, metrics=metrics, guard=guard)
        assert [(i.kind, i.index) for i in hook.shadow.in_doubt] == [("sign_remote_commitment", 2)]
        ctx = ConnContext(conn_id=1, role=ROLE_CLIENT, peer_id=peer_id(), dbid=1, permissions=447)
        body = wire.encode(request("hsmd_sign_remote_commitment_tx", 1, commit_num=2, feerate=400))
        ex = Exchange(ctx, 0, body, wire.decode(body))

        async def node_retries():
            with trio.fail_after(10):
                verdict = await hook.on_request(ex, REQUEST_BEFORE)
                if not guard:
                    ex.reply_raw, ex.reply = SIGNED, wire.decode(SIGNED)
                    await hook.on_reply(ex, REPLY_BEFORE)
                return verdict

        verdict = trio.run(node_retries)  # not under pytest-trio: the child above forks, then runs trio
        hook.close()
        statuses = {e["kind"]: (e["status"], e.get("in_doubt")) for e in hook.divergences_jsonable()}
        text = generate_latest(metrics.registry).decode()
        assert 'hsmproxy_divergences_total{kind="double_signed"} 0.0' in text
        assert 'hsmproxy_divergences_total{kind="retry_changed"} 0.0' in text
        assert 'hsmproxy_divergences_in_doubt_total{kind="double_signed"} 1.0' in text
        if guard:
            assert isinstance(verdict, Refuse)
            assert statuses == {"retry_changed": ("prevented", True), "double_signed": ("prevented", True)}
        else:
            assert verdict is None
            assert statuses == {"retry_changed": ("possible", True), "double_signed": ("possible", True)}
            assert hook.shadow.in_doubt == []  # the signer answered for 2 now
        assert [e.status for e in recover(directory, repair=True)[0].events] == [s for s, _ in statuses.values()]
