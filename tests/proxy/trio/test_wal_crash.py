"""SIGKILL a real process that runs the shadow and its WAL at random points, hundreds of times,
and check that the recovered shadow holds everything the node had been told.

The child is a fork of the test process (so each iteration costs milliseconds, not an
interpreter start). It runs the real trio group-commit shell with several channels signing
concurrently and checkpoints every few dozen records, so kills land in appends, in fdatasync,
and in the middle of checkpoints. After each outcome is durable it "tells the node" by writing
an acknowledgement to a pipe; the parent kills it at a random moment and recovers.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct

import trio

from proxy.core.shadow import (
    SIGNED,
    SIGN_REMOTE,
    VALIDATE_REVOCATION,
    Intent,
    Shadow,
    intent_record,
    load_shadow,
    outcome_record,
    restart_record,
    shadow_to_snapshot,
)
from proxy.trio.group_commit import GroupCommitWal
from proxy.trio.wal_store import WalStore, read_state
from tests.crash_harness import run_and_sigkill

ACK = struct.Struct(">IQ32s")  # dbid, index, digest
CHANNELS = 6
PEER = b"\x02" * 33


def point(n: int) -> bytes:
    return b"\x03" + n.to_bytes(32, "big")
ITERATIONS = 200


def child(directory: str, ack_fd: int, seed: int) -> None:
    rng = random.Random(seed)

    async def main():
        store, rec = WalStore.open(directory)
        shadow = load_shadow(rec.snapshot, rec.records)
        wal = GroupCommitWal(store, lambda: shadow_to_snapshot(shadow), checkpoint_every=rng.choice([20, 40, 400]))
        await wal.append(restart_record(0))
        shadow.restart()

        async def channel(dbid):
            ch = shadow.channel(PEER, dbid)
            while True:
                n = ch.next_counterparty_commit_num or 0
                if n >= 2 and ch.next_counterparty_revoke_num < n - 1:
                    # The peer revokes n-2 (again, if a kill interrupted it), as channeld does.
                    await step(Intent(0, VALIDATE_REVOCATION, PEER, dbid, n - 2, None, point(n - 2), conn=dbid))
                    continue
                # Deterministic per index: after a kill the node re-sends the same commitment,
                # as a node that writes its intent first does.
                digest = hashlib.sha256(b"%d/%d" % (dbid, n)).digest()
                await step(Intent(0, SIGN_REMOTE, PEER, dbid, n, digest, point(n), conn=dbid))
                os.write(ack_fd, ACK.pack(dbid, n, digest))  # the node is told only now

        async def step(intent):
            intent, _ = shadow.begin(intent)
            await wal.append(intent_record(intent))  # durable before "forwarding"
            await trio.sleep(0)  # the signer works
            shadow.finish(intent.op_id, SIGNED)
            await wal.append(outcome_record(intent.op_id, SIGNED, 0))  # durable before the node sees it

        async with trio.open_nursery() as nursery:
            for dbid in range(CHANNELS):
                nursery.start_soon(channel, dbid)

    trio.run(main)


def run_once(directory: str, rng: random.Random, acked: dict) -> None:
    run_and_sigkill(child, directory, rng, acked, ACK, max_seconds=0.05)


def check_recovered(directory: str, acked: dict) -> Shadow:
    rec = read_state(directory, repair=True)
    shadow = load_shadow(rec.snapshot, rec.records)
    for dbid, (n, digest) in acked.items():
        ch = shadow.channel(PEER, dbid)
        next_num = ch.next_counterparty_commit_num
        # The node was told about n. Later signatures may also have become durable before a
        # kill (the workload's node resumes from the shadow, so it can be further ahead).
        assert next_num is not None and next_num >= n + 1, (dbid, n, next_num)
        if next_num == n + 1:
            assert ch.current_counterparty_digest == digest, (dbid, n)
        elif next_num == n + 2 and ch.next_counterparty_revoke_num <= n:  # revoked: dropped, as in VLS
            assert ch.previous_counterparty_digest == digest, (dbid, n)
        if next_num >= 2:
            assert ch.previous_counterparty_point == point(next_num - 2)
        assert ch.current_counterparty_point == point(next_num - 1)
    assert shadow.events == [], "an honest workload has no divergence"
    return shadow


def test_sigkill_at_random_points_loses_no_answered_state(tmp_path):
    rng = random.Random(0x5EED)
    directory = str(tmp_path / "wal")
    os.mkdir(directory, 0o700)
    acked: dict = {}
    for _ in range(ITERATIONS):
        run_once(directory, rng, acked)
        check_recovered(directory, acked)
    # The workload made progress across kills (how much depends on the disk and the load).
    assert sum(n for n, _ in acked.values()) >= 2 * CHANNELS


def test_corrupted_tail_after_a_kill_is_cut_and_reported(tmp_path):
    rng = random.Random(7)
    directory = str(tmp_path / "wal")
    acked: dict = {}
    while not acked:
        run_once(directory, rng, acked)
    rec = read_state(directory, repair=True)
    log = os.path.join(directory, f"wal-{rec.epoch}.log")
    size = os.path.getsize(log)
    with open(log, "ab") as f:
        f.write(b"\x00\x00\x00\x10garbage")  # a torn record after the last good one
    rec2 = read_state(directory, repair=True)
    assert rec2.problem and rec2.cut_bytes == 11 and os.path.getsize(log) == size
    check_recovered(directory, acked)
