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
import struct

import trio
from coincurve import PrivateKey

import wire
from proxy.addons.shadow_hook import ShadowHook
from proxy.core.digest import digest_of_request
from proxy.core.hooks import REPLY_BEFORE, REQUEST_BEFORE, ROLE_CLIENT, ConnContext, Exchange
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
