"""A damaged WAL never destroys good records (issue 12, item 2).

A torn tail (invalid bytes at the end of the newest log, nothing valid after them) is what a
crash leaves, and a start cuts it. Anything else that stops a replay (invalid bytes followed by
records that verify, a record that verifies but cannot be used, a log whose snapshot is missing)
is damage: a start refuses and touches nothing, unless it is asked to set the damage aside, which
renames files and never deletes them.
"""

from __future__ import annotations

import os
import random
import stat

import pytest
import trio
from hypothesis import given, settings, strategies as st

from proxy.core.wal_format import (
    BAD_CONTENT,
    CORRUPT,
    FILE_HEADER,
    NO_SNAPSHOT,
    RECORD_HEADER,
    WalDamaged,
    WalError,
    _crc,
    encode_record,
    file_header,
    scan_log,
)
from proxy.trio.group_commit import GroupCommitWal
from proxy.trio.wal_store import WalStore, read_state

RECORDS = 2000


def log_bytes(epoch: int, records: list) -> bytes:
    return file_header(epoch) + b"".join(encode_record(epoch, i, r) for i, r in enumerate(records))


def offsets(epoch: int, records: list) -> list[int]:
    """The byte where each record starts."""
    out, pos = [], FILE_HEADER.size
    for i, r in enumerate(records):
        out.append(pos)
        pos += len(encode_record(epoch, i, r))
    return out


def sample_records(n: int = RECORDS) -> list:
    rng = random.Random(n)
    return [["rec", i, rng.randbytes(rng.randrange(0, 120))] for i in range(n)]


def write_log(directory, records: list, epoch: int = 0) -> str:
    path = os.path.join(directory, f"wal-{epoch}.log")
    with open(path, "wb") as f:
        f.write(log_bytes(epoch, records))
    os.chmod(path, 0o600)
    return path


def with_undecodable_record(records: list, index: int) -> bytes:
    """A log whose record ``index`` verifies but is not msgpack (0xc1 is the byte msgpack never uses)."""
    bad = b"\xc1"
    return (log_bytes(0, records[:index]) + RECORD_HEADER.pack(len(bad), _crc(0, index, bad)) + bad
            + b"".join(encode_record(0, i, r) for i, r in enumerate(records[index + 1 :], start=index + 1)))


def flip(path: str, pos: int, bit: int = 3) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ (1 << bit)]))


def snapshot_of_directory(directory) -> dict:
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


# --- the scan tells a torn tail from damage ---------------------------------------------------


def test_a_flipped_bit_in_the_middle_of_a_long_log_is_damage_with_every_later_record_counted():
    records = sample_records()
    data = bytearray(log_bytes(0, records))
    at = offsets(0, records)[1000]
    data[at + RECORD_HEADER.size + 2] ^= 0x10  # in record 1000's payload
    result = scan_log(bytes(data), 0)
    assert result.count == 1000 and result.records == records[:1000]
    assert not result.torn_tail and not result.bad_content
    assert result.valid_after == RECORDS - 1001 and result.next_valid_at == offsets(0, records)[1001]


@pytest.mark.parametrize("where", ["length", "crc", "payload"])
def test_damage_in_any_field_of_a_record_is_found(where):
    """A flipped length loses the record boundaries: the search still finds the next record."""
    records = sample_records(50)
    data = bytearray(log_bytes(0, records))
    at = offsets(0, records)[20]
    data[at + {"length": 2, "crc": 5, "payload": RECORD_HEADER.size}[where]] ^= 0x04
    result = scan_log(bytes(data), 0)
    assert (result.count, result.valid_after, result.torn_tail) == (20, 29, False)


def test_a_zeroed_block_garbage_and_a_misdirected_record_are_damage():
    records = sample_records(400)
    starts = offsets(0, records)
    clean = log_bytes(0, records)
    zeroed = clean[: starts[100] + 5] + bytes(4096) + clean[starts[100] + 5 + 4096 :]
    garbage = clean[: starts[100]] + random.Random(1).randbytes(4096) + clean[starts[100] + 4096 :]
    misdirected = clean[: starts[100]] + encode_record(0, 7, records[7]) + clean[starts[101] :]  # same length
    for data in (zeroed, garbage, misdirected):
        result = scan_log(data, 0)
        assert result.count == 100 and result.valid_after > 0 and not result.torn_tail
    assert scan_log(misdirected, 0).valid_after == 299


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=30), max_size=3), min_size=2, max_size=30), st.data())
def test_a_flipped_bit_is_a_torn_tail_only_in_the_last_record(records, data):
    full = bytearray(log_bytes(0, records))
    pos = data.draw(st.integers(FILE_HEADER.size, len(full) - 1))
    full[pos] ^= 1 << data.draw(st.integers(0, 7))
    result = scan_log(bytes(full), 0)
    damaged = max(i for i, start in enumerate(offsets(0, records)) if start <= pos)
    assert result.count == damaged
    assert result.valid_after == len(records) - damaged - 1
    assert result.torn_tail == (damaged == len(records) - 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=60), max_size=4), min_size=1, max_size=20), st.data())
def test_a_write_cut_short_anywhere_is_a_torn_tail(records, data):
    full = log_bytes(0, records)
    cut = data.draw(st.integers(FILE_HEADER.size, len(full) - 1))
    result = scan_log(full[:cut], 0)
    assert result.torn_tail or result.problem is None
    assert result.valid_after == 0


def test_a_record_that_verifies_but_does_not_decode_is_damage_not_a_torn_tail():
    records = sample_records(30)
    data = with_undecodable_record(records, 10)
    result = scan_log(data, 0)
    assert result.bad_content and not result.torn_tail
    assert (result.count, result.valid_after) == (10, 19)
    assert "record 10" in result.problem and "does not decode" in result.problem


def test_a_record_the_sink_refuses_is_damage_and_names_its_content():
    records = [["ok", i] for i in range(10)] + [[]] + [["ok", i] for i in range(11, 20)]

    def sink(record):
        if not record:
            raise IndexError("list index out of range")

    result = scan_log(log_bytes(0, records), 0, sink)
    assert result.bad_content and (result.count, result.valid_after) == (10, 9)
    assert "record 10" in result.problem and "unexpected content" in result.problem and "[]" in result.problem


# --- a start refuses damage and touches nothing ----------------------------------------------


def test_a_start_refuses_a_flipped_bit_in_the_middle_and_changes_nothing(tmp_path):
    """The issue's case: one bit in the middle of a log of 2,000 records. It used to be cut as a
    torn tail with the 999 valid records after it."""
    records = sample_records()
    path = write_log(tmp_path, records)
    at = offsets(0, records)[1000]
    flip(path, at + RECORD_HEADER.size + 1)
    (tmp_path / "snapshot-7.bin.tmp").write_bytes(b"left by a checkpoint")
    before = snapshot_of_directory(tmp_path)
    with pytest.raises(WalDamaged) as caught:
        read_state(str(tmp_path), repair=True)
    message = str(caught.value)
    assert "wal-0.log" in message and f"byte {at}" in message and "999 record(s) after it verify" in message
    assert [(d.kind, d.index, d.valid_after) for d in caught.value.damage] == [(CORRUPT, 1000, 999)]
    assert snapshot_of_directory(tmp_path) == before


def test_reading_a_damaged_log_shows_the_prefix_and_says_what_it_could_not_read(tmp_path):
    records = sample_records()
    path = write_log(tmp_path, records)
    flip(path, offsets(0, records)[1000] + RECORD_HEADER.size + 1)
    before = snapshot_of_directory(tmp_path)
    rec = read_state(str(tmp_path), repair=False)
    assert rec.records == records[:1000] and rec.problem is None and rec.cut_bytes == 0
    (damage,) = rec.damage
    assert (damage.kind, damage.file, damage.index, damage.valid_after) == (CORRUPT, "wal-0.log", 1000, 999)
    assert snapshot_of_directory(tmp_path) == before


def test_repair_moves_the_damaged_log_aside_and_keeps_the_good_prefix(tmp_path):
    records = sample_records()
    path = write_log(tmp_path, records)
    at = offsets(0, records)[1000]
    flip(path, at + RECORD_HEADER.size + 1)
    damaged_bytes = open(path, "rb").read()
    store, rec = WalStore.open(str(tmp_path), set_aside_damage=True)
    (damage,) = rec.damage
    aside = tmp_path / damage.set_aside
    assert damage.set_aside.startswith("wal-0.log.damaged-")
    assert aside.read_bytes() == damaged_bytes and stat.S_IMODE(aside.stat().st_mode) == 0o600
    assert rec.records == records[:1000]
    assert open(path, "rb").read() == log_bytes(0, records[:1000])
    (note,) = rec.notes
    assert f"moved wal-0.log aside to {damage.set_aside}" in note
    assert "first 1000 record(s)" in note and "999 record(s) that verify after it" in note
    store.write_durably(store.encode(["after repair"]))  # appends continue the kept prefix
    store.close()
    again = read_state(str(tmp_path), repair=True)
    assert again.damage == [] and again.records == records[:1000] + [["after repair"]]
    assert aside.read_bytes() == damaged_bytes  # a later start leaves it alone


def test_a_torn_tail_is_still_cut_at_start(tmp_path):
    records = sample_records(100)
    path = write_log(tmp_path, records)
    with open(path, "ab") as f:
        f.write(encode_record(0, 100, ["torn"])[:-4])
    rec = read_state(str(tmp_path), repair=True)
    assert rec.damage == [] and rec.records == records and rec.cut_bytes > 0
    assert os.path.getsize(path) == len(log_bytes(0, records))
    assert any(n.startswith("cut ") and "wal-0.log" in n for n in rec.notes)


def test_bad_content_refuses_a_start_and_repair_keeps_the_records_before_it(tmp_path):
    records = sample_records(30)
    data = with_undecodable_record(records, 10)
    (tmp_path / "wal-0.log").write_bytes(data)
    with pytest.raises(WalDamaged, match="record 10 at byte"):
        read_state(str(tmp_path), repair=True)
    assert (tmp_path / "wal-0.log").read_bytes() == data  # it used to be cut as a torn tail
    rec = read_state(str(tmp_path), repair=True, set_aside_damage=True)
    assert rec.records == records[:10] and (rec.damage[0].kind, rec.damage[0].valid_after) == (BAD_CONTENT, 19)


# --- no log is deleted unless its records are in a durable snapshot ---------------------------


def checkpointed(directory, *, before: int, after: int) -> WalStore:
    """Epoch 0 with ``before`` records, a checkpoint, then ``after`` records in epoch 1."""
    store, _ = WalStore.open(str(directory))
    store.write_durably(b"".join(store.encode(["e0", i]) for i in range(before)))
    store.checkpoint(store.start_epoch(), {"state": "after epoch 0"})
    store.write_durably(b"".join(store.encode(["e1", i]) for i in range(after)))
    store.close()
    return store


def test_a_log_whose_snapshot_is_missing_is_damage_not_an_empty_shadow(tmp_path):
    checkpointed(tmp_path, before=5, after=12)
    os.unlink(tmp_path / "snapshot-1.bin")
    before = snapshot_of_directory(tmp_path)
    rec = read_state(str(tmp_path), repair=False)
    assert [(d.kind, d.file, d.valid_after) for d in rec.damage] == [(NO_SNAPSHOT, "wal-1.log", 12)]
    assert "snapshot-1.bin" in rec.damage[0].describe()
    with pytest.raises(WalDamaged, match="wal-1.log holds 12 record"):
        read_state(str(tmp_path), repair=True)
    assert snapshot_of_directory(tmp_path) == before  # it used to be deleted at start
    rec = read_state(str(tmp_path), repair=True, set_aside_damage=True)
    aside = rec.damage[0].set_aside
    assert aside.startswith("wal-1.log.damaged-") and (tmp_path / aside).read_bytes() == before["wal-1.log"]
    assert sorted(os.listdir(tmp_path)) == sorted([aside, "proxy.lock", "wal-0.log"])


def test_an_older_epochs_log_is_removed_only_as_covered_by_the_snapshot_and_said(tmp_path):
    """A crash between a checkpoint's renames and its deletions leaves the old epoch's files."""
    checkpointed(tmp_path, before=5, after=3)
    (tmp_path / "wal-0.log").write_bytes(log_bytes(0, [["e0", i] for i in range(5)]))
    rec = read_state(str(tmp_path), repair=True)
    assert rec.damage == [] and rec.epoch == 1 and rec.records == [["e1", i] for i in range(3)]
    assert "removed wal-0.log: its records are in snapshot-1.bin" in rec.notes
    assert sorted(os.listdir(tmp_path)) == ["proxy.lock", "snapshot-1.bin", "wal-1.log"]


def test_an_empty_log_of_an_interrupted_checkpoint_is_removed_and_said(tmp_path):
    store, _ = WalStore.open(str(tmp_path))
    store.write_durably(store.encode(["e0", 0]))
    store.close()
    (tmp_path / "wal-1.log").write_bytes(file_header(1))  # renamed before its snapshot: the crash came between
    (tmp_path / "snapshot-1.bin.tmp").write_bytes(b"half a checkpoint")
    rec = read_state(str(tmp_path), repair=True)
    assert rec.damage == [] and rec.records == [["e0", 0]]
    assert "removed wal-1.log: an empty log left by an interrupted checkpoint" in rec.notes
    assert any(n.startswith("removed snapshot-1.bin.tmp") for n in rec.notes)
    assert sorted(os.listdir(tmp_path)) == ["proxy.lock", "wal-0.log"]


def test_a_newer_log_with_records_is_never_removed(tmp_path):
    """A log of a later epoch than the newest snapshot, holding records: its snapshot is gone."""
    store, _ = WalStore.open(str(tmp_path))
    store.write_durably(store.encode(["e0", 0]))
    store.close()
    write_log(tmp_path, [["e3", i] for i in range(4)], epoch=3)
    before = snapshot_of_directory(tmp_path)
    with pytest.raises(WalDamaged, match="snapshot-3.bin"):
        read_state(str(tmp_path), repair=True)
    assert snapshot_of_directory(tmp_path) == before


def test_a_foreign_file_is_named(tmp_path):
    write_log(tmp_path, [["e0", 0]])
    (tmp_path / "wal-2.log").write_bytes(b"SQLite format 3\x00" + bytes(40))
    with pytest.raises(WalError, match="wal-2.log: not an hsmproxy WAL file"):
        read_state(str(tmp_path), repair=True)



async def test_a_checkpoint_never_renames_over_an_existing_file(tmp_path):
    """Someone else's wal-1.log (another proxy on the same directory?) is not overwritten: the
    WAL stops instead, as for a failed write."""
    store, _ = WalStore.open(str(tmp_path))
    theirs = log_bytes(1, [["theirs", i] for i in range(3)])
    (tmp_path / "wal-1.log").write_bytes(theirs)
    wal = GroupCommitWal(store, lambda: {"state": 1}, checkpoint_every=2)
    with trio.fail_after(10):
        await wal.append(["ours", 0])
        with pytest.raises(WalError, match="wal-1.log already exists"):
            await wal.append(["ours", 1])
        with pytest.raises(WalError, match="failed earlier"):
            await wal.append(["ours", 2])
    store.close()
    assert (tmp_path / "wal-1.log").read_bytes() == theirs
    assert read_state(str(tmp_path), repair=False).records == [["ours", 0], ["ours", 1]]
