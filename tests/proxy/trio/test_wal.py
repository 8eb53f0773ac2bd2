"""The WAL: record format, torn and corrupted tails, recovery, checkpoints, group commit."""

from __future__ import annotations

import os
import random
import stat

import pytest
import trio
from hypothesis import given, settings, strategies as st

from proxy.core.shadow import (
    GET_POINT,
    SIGNED,
    SIGN_REMOTE,
    SIGNER_REJECTED,
    Intent,
    Shadow,
    apply_record,
    intent_record,
    load_shadow,
    outcome_record,
    restart_record,
    shadow_from_snapshot,
    shadow_to_snapshot,
)
from proxy.core.wal_format import (
    FILE_HEADER,
    WalError,
    decode_snapshot,
    encode_record,
    encode_snapshot,
    file_header,
    scan_log,
)
from proxy.trio.group_commit import GroupCommitWal
from proxy.trio.wal_store import WalStore, locked_directory, read_state, wait_released
from tests.paths import TESTS

payloads = st.lists(
    st.recursive(st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=40), st.text(max_size=20),
                           st.none(), st.booleans()),
                 lambda inner: st.lists(inner, max_size=4), max_leaves=8),
    max_size=12,
)


def log_bytes(epoch, records):
    return file_header(epoch) + b"".join(encode_record(epoch, i, r) for i, r in enumerate(records))


@settings(max_examples=60, deadline=None)
@given(payloads)
def test_records_round_trip(records):
    result = scan_log(log_bytes(3, records), 3)
    assert result.records == records and result.problem is None


@settings(max_examples=40, deadline=None)
@given(payloads.filter(bool), st.data())
def test_every_torn_tail_keeps_exactly_the_complete_records(records, data):
    full = log_bytes(0, records)
    cut = data.draw(st.integers(0, len(full) - 1))
    result = scan_log(full[:cut], 0)
    complete = [r for i, r in enumerate(records) if len(log_bytes(0, records[: i + 1])) <= cut]
    assert result.records == complete
    assert result.valid_len == len(log_bytes(0, complete)) if cut >= FILE_HEADER.size else result.valid_len == 0
    assert (result.problem is None) == (cut == result.valid_len)


@settings(max_examples=40, deadline=None)
@given(payloads.filter(bool), st.data())
def test_a_flipped_bit_ends_the_valid_prefix_at_its_record(records, data):
    full = bytearray(log_bytes(0, records))
    pos = data.draw(st.integers(FILE_HEADER.size, len(full) - 1))
    full[pos] ^= 1 << data.draw(st.integers(0, 7))
    result = scan_log(bytes(full), 0)
    damaged = next(i for i in range(len(records)) if len(log_bytes(0, records[: i + 1])) > pos)
    assert result.records == records[:damaged]
    assert result.problem is not None


def test_files_written_by_an_earlier_version_decode_and_encode_to_the_same_bytes():
    """The on-disk format did not move: tests/fixtures/wal-v1 (written by commit 4c14c53, before
    wal.py and shadow.py were split) decodes, and encoding what it holds gives its bytes back."""
    snapshot_bytes = (TESTS / "fixtures" / "wal-v1" / "snapshot-2.bin").read_bytes()
    log = (TESTS / "fixtures" / "wal-v1" / "wal-2.log").read_bytes()
    shadow = shadow_from_snapshot(decode_snapshot(snapshot_bytes, 2))
    assert shadow.events and shadow.pending and shadow.in_doubt and shadow.recent_unanswered
    assert encode_snapshot(2, shadow_to_snapshot(shadow)) == snapshot_bytes
    scanned = scan_log(log, 2)
    assert scanned.problem is None and scanned.count == 7
    assert file_header(2) + b"".join(encode_record(2, i, r) for i, r in enumerate(scanned.records)) == log
    for rec in scanned.records:
        apply_record(shadow, rec)
    assert shadow.in_doubt and shadow.events[-1].kind == SIGNER_REJECTED


def test_records_from_another_position_or_epoch_fail_the_check():
    a, b = encode_record(0, 0, ["a"]), encode_record(0, 1, ["b"])
    swapped = scan_log(file_header(0) + b + a, 0)
    assert swapped.records == [] and "checksum" in swapped.problem
    other_epoch = scan_log(file_header(1) + a, 1)
    assert other_epoch.records == []


def test_foreign_file_is_named():
    with pytest.raises(WalError, match="not an hsmproxy WAL file"):
        scan_log(b"SQLite format 3\x00" + bytes(40))


def test_recovery_cuts_the_torn_tail_and_files_are_private(tmp_path):
    d = str(tmp_path / "wal")
    store, rec = WalStore.open(d)
    assert rec.records == [] and rec.epoch == 0
    store.write_durably(b"".join(store.encode(["rec", i]) for i in range(5)))
    store.close()
    path = os.path.join(d, "wal-0.log")
    with open(path, "ab") as f:
        f.write(encode_record(0, 5, ["torn", 5])[:-3])
    store, rec = WalStore.open(d)
    assert rec.records == [["rec", i] for i in range(5)]
    assert rec.cut_bytes > 0 and "torn" in rec.problem
    assert os.path.getsize(path) == len(log_bytes(0, rec.records))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    store.write_durably(store.encode(["after", 0]))  # appends continue the index after the cut
    store.close()
    assert read_state(d, repair=False).records[-1] == ["after", 0]


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(WalError, match="does not exist"):
        read_state(str(tmp_path / "nope"), repair=False)


def test_one_writer_per_directory_until_it_closes(tmp_path):
    """flock locks belong to an open file, so a second open in this very process is refused too;
    the lock goes with ``close()`` (or the process), and the signer a wrapper starts never gets it."""
    store, _ = WalStore.open(str(tmp_path))
    lock = os.open(tmp_path / "proxy.lock", os.O_RDONLY)
    try:
        with pytest.raises(WalError) as refused:
            WalStore.open(str(tmp_path))
        assert f"WAL directory {str(tmp_path)!r} is in use by another proxy (pid {os.getpid()})" in str(refused.value)
        assert "--wal-dir" in str(refused.value)
        held = [fd for fd in map(int, os.listdir("/proc/self/fd")) if _is(fd, tmp_path / "proxy.lock") and fd != lock]
        assert held and not any(os.get_inheritable(fd) for fd in held)  # close-on-exec
    finally:
        os.close(lock)
        store.close()
    again, rec = WalStore.open(str(tmp_path))  # the refused attempt left nothing locked behind
    again.close()
    assert rec.epoch == 0


def _is(fd: int, path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


def test_damaged_snapshot_is_not_silently_discarded(tmp_path):
    d = str(tmp_path)
    store, _ = WalStore.open(d)
    store.checkpoint(store.start_epoch(), {"x": 1})
    store.close()
    with open(os.path.join(d, "snapshot-1.bin"), "r+b") as f:
        f.seek(30)
        f.write(b"\xff")
    with pytest.raises(WalError, match="snapshot-1.bin is damaged"):
        read_state(d, repair=True)


async def run_channels(wal, shadow, channels, ops_per_channel):
    """Each channel signs its next counterparty commitment: intent durable, then outcome durable."""

    async def channel(dbid):
        for n in range(ops_per_channel):
            intent = Intent(0, SIGN_REMOTE, b"\x02" * 33, dbid, n, os.urandom(32), b"\x03" * 33, conn=dbid)
            intent, _ = shadow.begin(intent)
            await wal.append(intent_record(intent))
            shadow.finish(intent.op_id, SIGNED)
            await wal.append(outcome_record(intent.op_id, SIGNED, 0))

    async with trio.open_nursery() as nursery:
        for dbid in range(1, channels + 1):
            nursery.start_soon(channel, dbid)


async def test_group_commit_shares_syncs_and_checkpoints_keep_the_state(tmp_path):
    d = str(tmp_path)
    store, _ = WalStore.open(d)
    shadow = Shadow()
    wal = GroupCommitWal(store, lambda: shadow_to_snapshot(shadow), checkpoint_every=150)
    with trio.fail_after(20):
        await run_channels(wal, shadow, channels=16, ops_per_channel=20)
    assert wal.syncs < 640 / 4  # 640 records, far fewer syncs
    assert wal.checkpoints >= 2
    store.close()
    rec = read_state(d, repair=True)
    assert rec.epoch == wal.checkpoints and sorted(os.listdir(d)) == [
        "proxy.lock", f"snapshot-{rec.epoch}.bin", f"wal-{rec.epoch}.log"]
    recovered = load_shadow(rec.snapshot, rec.records)
    assert shadow_to_snapshot(recovered) == shadow_to_snapshot(shadow)
    assert all(ch.next_counterparty_commit_num == 20 for ch in recovered.channels.values())


async def test_appends_after_a_checkpoint_continue_the_new_epoch(tmp_path):
    store, _ = WalStore.open(str(tmp_path))
    shadow = Shadow()
    wal = GroupCommitWal(store, lambda: shadow_to_snapshot(shadow), checkpoint_every=12)
    with trio.fail_after(10):
        await run_channels(wal, shadow, 2, 3)  # 12 records: the write of the last one checkpoints
        assert (wal.checkpoints, store.epoch, store.index) == (1, 1, 0)
        await run_channels(wal, shadow, 3, 1)  # 6 records in epoch 1
    store.close()
    rec = read_state(str(tmp_path), repair=False)
    assert (rec.epoch, len(rec.records)) == (1, 6) and rec.snapshot is not None
    assert shadow_to_snapshot(load_shadow(rec.snapshot, rec.records)) == shadow_to_snapshot(shadow)


async def test_a_failed_write_is_reported_and_sticks(tmp_path):
    store, _ = WalStore.open(str(tmp_path))
    wal = GroupCommitWal(store)
    store.close()  # the fd is gone: the write fails with EBADF
    with trio.fail_after(5):
        with pytest.raises(WalError, match="failed"):
            await wal.append(["x"])
        with pytest.raises(WalError, match="failed earlier"):
            await wal.append(["y"])


async def test_a_cancelled_appender_stops_at_its_next_append(tmp_path):
    """``append`` is a cancellation point also for the caller that becomes the writer (whose
    write is shielded): a cancelled task that keeps appending stops at its next append instead
    of writing and fdatasyncing everything it had left. The record that append had ordered is
    written with the next append (as for an appender cancelled while waiting)."""
    store, _ = WalStore.open(str(tmp_path))
    wal = GroupCommitWal(store)
    appended = []
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            for n in range(100):
                if n == 3:
                    scope.cancel()  # e.g. the connection closed
                await wal.append(["rec", n])
                appended.append(n)
        assert scope.cancelled_caught and appended == [0, 1, 2]
        await wal.append(["after"])
    store.close()
    assert read_state(str(tmp_path), repair=False).records == [["rec", 0], ["rec", 1], ["rec", 2], ["rec", 3], ["after"]]


async def test_cancelled_appenders_never_tear_the_log(tmp_path):
    """Appenders cancelled at random moments (a connection closing mid-append): whatever was
    written is a valid log that replays, and later appends continue it."""
    store, _ = WalStore.open(str(tmp_path))
    shadow = Shadow()
    wal = GroupCommitWal(store, lambda: shadow_to_snapshot(shadow), checkpoint_every=25)
    rng = random.Random(3)

    async def appender(dbid):
        for n in range(1000):
            intent, _ = shadow.begin(Intent(0, GET_POINT, b"\x02" * 33, dbid, n, conn=dbid))
            await wal.append(intent_record(intent))
            shadow.finish(intent.op_id, SIGNED)
            await wal.append(outcome_record(intent.op_id, SIGNED, 0))

    with trio.fail_after(30):
        for round_ in range(8):
            async with trio.open_nursery() as nursery:
                for dbid in range(4):
                    nursery.start_soon(appender, round_ * 10 + dbid)
                await trio.sleep(rng.uniform(0, 0.02))
                nursery.cancel_scope.cancel()
        await wal.append(restart_record(0))  # flushes anything a cancelled appender left buffered
    store.close()
    rec = read_state(str(tmp_path), repair=False)
    assert rec.problem is None
    assert shadow_to_snapshot(load_shadow(rec.snapshot, rec.records))["channels"] == shadow_to_snapshot(shadow)["channels"]
    assert wal.checkpoints >= 1


def test_waiting_for_a_directory_to_be_released_ends_when_its_proxy_lets_go(tmp_path):
    """What the pyln plugin waits on after a node died: the proxy's lock on its WAL directory."""
    assert wait_released(str(tmp_path), timeout=0)  # no proxy ever took it
    with locked_directory(str(tmp_path)) as lock_fd:
        assert not wait_released(str(tmp_path), timeout=0.05)
        os.close(lock_fd)  # what WalStore.close does
    assert wait_released(str(tmp_path), timeout=0)
