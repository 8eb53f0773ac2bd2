"""The write-ahead log's on-disk format, sans-IO: file names, file header, record framing,
scanning a log's bytes, and the snapshot file.

Layout of ``--wal-dir``:
    snapshot-<epoch>.bin   the shadow as it was when the log of <epoch> started (absent for epoch 0)
    wal-<epoch>.log        records appended since that snapshot

A log file starts with ``MAGIC`` and the epoch (u64). Each record is
    u32 payload length | u32 crc32(epoch, record index, length, payload) | msgpack payload
so a torn write, a flipped bit, or a record copied from another position or epoch fails the
check. A snapshot file is ``SNAPSHOT_MAGIC``, the epoch (u64), u32 crc32(payload), and the
msgpack payload.

A write cut short (a crash) leaves invalid bytes only at the end of the newest log: a *torn
tail*, which a starting proxy may cut. Invalid bytes followed by records that verify are
*damage* (a flipped bit, a bad sector, a misdirected write): the records after it cannot be
replayed without the ones it destroyed, and they must not be cut either. ``scan_log`` tells the
two apart by looking for a record that verifies past the point where the valid prefix ends.

The file work (recovery, checkpoints, fsync) is ``proxy.trio.wal_store``; the trio group commit
is ``proxy.trio.group_commit``.
"""

from __future__ import annotations

import functools
import re
import struct
import zlib
from dataclasses import dataclass, field

import msgpack

MAGIC = b"HSMPWAL1"
SNAPSHOT_MAGIC = b"HSMPSNP1"
FILE_HEADER = struct.Struct(">8sQ")  # magic, epoch
RECORD_HEADER = struct.Struct(">II")  # payload length, crc32
SNAPSHOT_CRC = struct.Struct(">I")  # crc32 of the snapshot payload, after the file header
MAX_RECORD_LEN = 1 << 24
MIN_RECORD_LEN = RECORD_HEADER.size + 1  # a msgpack payload is at least one byte

_CRC_PREFIX = struct.Struct(">QQI")  # epoch, record index, payload length: bound into each checksum
_LOG_NAME = re.compile(r"^wal-(\d+)\.log$")
_SNAPSHOT_NAME = re.compile(r"^snapshot-(\d+)\.bin$")


class WalError(Exception):
    """The WAL directory cannot be used (unreadable, not ours, or the disk refused a write)."""


class WalDamaged(WalError):
    """Records that verify could not be replayed: the log is damaged, not torn (see ``Damage``)."""

    def __init__(self, directory: str, damage: list["Damage"]):
        self.directory = directory
        self.damage = damage
        super().__init__("; ".join(d.describe() for d in damage))


# --- file names ------------------------------------------------------------------------------


def log_name(epoch: int) -> str:
    return f"wal-{epoch}.log"


def snapshot_name(epoch: int) -> str:
    return f"snapshot-{epoch}.bin"


def epochs_of(names) -> tuple[list[int], list[int]]:
    """The epochs of the log files and of the snapshot files among ``names``, each sorted."""
    logs, snaps = [], []
    for name in names:
        if m := _LOG_NAME.match(name):
            logs.append(int(m.group(1)))
        elif m := _SNAPSHOT_NAME.match(name):
            snaps.append(int(m.group(1)))
    return sorted(logs), sorted(snaps)


# --- the log ----------------------------------------------------------------------------------


def file_header(epoch: int) -> bytes:
    return FILE_HEADER.pack(MAGIC, epoch)


def _crc(epoch: int, index: int, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(epoch, index, len(payload))))


def encode_record(epoch: int, index: int, obj) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    if len(payload) > MAX_RECORD_LEN:
        raise ValueError(f"WAL record of {len(payload)} bytes exceeds the {MAX_RECORD_LEN}-byte limit")
    return RECORD_HEADER.pack(len(payload), _crc(epoch, index, payload)) + payload


@dataclass
class ScanResult:
    records: list  # empty when a sink took them
    valid_len: int  # bytes of the file that hold a valid header and the records replayed
    problem: str | None = None  # why the scan stopped before the end, if it did
    count: int = 0  # records replayed (the valid prefix)
    bad_content: bool = False  # it stopped at a record that verifies but cannot be used
    valid_after: int = 0  # records after the stop that verify (they cannot be replayed without it)
    next_valid_at: int | None = None  # the byte where the first of them starts

    @property
    def torn_tail(self) -> bool:
        """Invalid bytes at the end and nothing valid after them: what a write cut short leaves."""
        return self.problem is not None and not self.bad_content and self.valid_after == 0


def scan_log(data: bytes, expected_epoch: int | None = None, sink=None) -> ScanResult:
    """Decode every valid record of a log file's bytes; stop at the first one that is invalid
    or whose content ``sink`` refuses (raises), and count the records that verify after it.

    With ``sink``, each record is passed to it as soon as it is verified instead of being
    collected (recovery replays a million records without holding them all)."""
    if len(data) < FILE_HEADER.size:
        return ScanResult([], 0, f"log header torn ({len(data)} of {FILE_HEADER.size} bytes)" if data else None)
    magic, epoch = FILE_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WalError(f"not an hsmproxy WAL file (magic {magic!r}); move it out of the WAL directory")
    if expected_epoch is not None and epoch != expected_epoch:
        raise WalError(f"log file says epoch {epoch} but its name says {expected_epoch}")
    records: list = []
    keep = records.append if sink is None else sink
    count = 0
    pos = FILE_HEADER.size
    end = len(data)
    view = memoryview(data)
    # Local names: this loop runs once per record of a million-record recovery.
    unpackb, crc32, prefix, header = msgpack.unpackb, zlib.crc32, _CRC_PREFIX.pack, RECORD_HEADER.unpack_from
    head_len = RECORD_HEADER.size
    while pos < end:
        if end - pos < head_len:
            problem = f"torn record header at byte {pos}"
            break
        length, crc = header(data, pos)
        start = pos + head_len
        if length > MAX_RECORD_LEN or start + length > end:
            problem = f"torn record at byte {pos} (length {length})"
            break
        payload = view[start : start + length]
        if crc32(payload, crc32(prefix(epoch, count, length))) != crc:
            problem = f"checksum mismatch in record {count} at byte {pos}"
            break
        try:
            keep(unpackb(payload, raw=False, use_list=True))
        except Exception as exc:  # bad msgpack, or content the sink cannot use: not a torn write
            what = _what_is_wrong(payload, exc)
            return _stopped_at_bad_content(records, data, epoch, pos, start + length, count, what)
        count += 1
        pos = start + length
    else:
        return ScanResult(records, pos, None, count)
    valid_after, next_valid_at = _records_after_damage(data, epoch, pos, count)
    return ScanResult(records, pos, problem, count, False, valid_after, next_valid_at)


def _stopped_at_bad_content(records, data, epoch, pos, next_pos, count, what) -> ScanResult:
    valid_after, stop = _verified_run(data, epoch, next_pos, count + 1)
    more, _ = _records_after_damage(data, epoch, stop, count + 1 + valid_after) if stop < len(data) else (0, None)
    after = valid_after + more
    problem = f"record {count} at byte {pos} has a valid checksum but {what}"
    return ScanResult(records, pos, problem, count, True, after, next_pos if after else None)


def _what_is_wrong(payload, exc: Exception) -> str:
    """Why a record that verifies could not be used: its msgpack, or what the sink said of it."""
    try:
        record = msgpack.unpackb(payload, raw=False, use_list=True)
    except Exception as decode_error:
        return f"does not decode: {decode_error}"
    text = repr(record)
    if len(text) > 80:
        text = text[:79] + "…"
    return f"unexpected content: {type(exc).__name__}: {exc} (the record is {text})"


# --- records that verify after damage -----------------------------------------------------------
#
# Where damage ends is unknown (a flipped length field loses the record boundaries), so the search
# tries every byte after it: a u32 length that fits, a payload that is exactly one msgpack object,
# and a CRC-32 that binds this epoch and an index the record can have there (at least the damaged
# record's, at most one more per MIN_RECORD_LEN bytes since). Bytes that are not a record pass
# all three with a probability of about (window of indices) / 2**32 per candidate that decodes:
# for the torn tail of a crash (less than one record, a window of a few indices) under 1e-8, and
# even a false positive only refuses a start that --wal-repair then makes; nothing is cut by it.
#
# The index is found, not guessed: zlib's CRC-32 is affine, so for one payload and one length
#     crc32(payload, crc32(prefix(e, k, L))) ^ crc32(payload, crc32(prefix(e, b, L)))
#         = ADVANCE_L(DELTA(k ^ b))
# where ADVANCE_L is the linear map of running the CRC register over L zero bytes and DELTA the
# linear map from an index difference (within one 2**32 block) to a prefix-CRC difference. Both
# are invertible 32x32 bit matrices, so one CRC over the payload gives the only index that can
# match (then checked directly). A window of a million indices costs what a window of one does.


def _records_after_damage(data: bytes, epoch: int, damaged_at: int, index: int) -> tuple[int, int | None]:
    """(records that verify after the damage at ``damaged_at``, where the first of them starts).
    ``index`` is the damaged record's index. Further damage is searched past the same way."""
    found, first = 0, None
    pos = damaged_at
    while pos < len(data):
        hit = _next_verified_record(data, epoch, pos, index)
        if hit is None:
            break
        pos, index = hit
        if first is None:
            first = pos
        run, pos = _verified_run(data, epoch, pos, index)
        found += run
        index += run
    return found, first


def _verified_run(data: bytes, epoch: int, pos: int, index: int) -> tuple[int, int]:
    """How many records verify in a row from ``pos`` (the first with ``index``), and where they end."""
    end, n = len(data), 0
    view = memoryview(data)
    crc32, prefix, header, head_len = zlib.crc32, _CRC_PREFIX.pack, RECORD_HEADER.unpack_from, RECORD_HEADER.size
    while end - pos >= head_len:
        length, crc = header(data, pos)
        start = pos + head_len
        if length > MAX_RECORD_LEN or start + length > end:
            break
        if crc32(view[start : start + length], crc32(prefix(epoch, index + n, length))) != crc:
            break
        n += 1
        pos = start + length
    return n, pos


def _next_verified_record(data: bytes, epoch: int, damaged_at: int, index: int) -> tuple[int, int] | None:
    """The first (byte, index) after ``damaged_at`` where a record verifies, or None."""
    end = len(data)
    view = memoryview(data)
    header, head_len = RECORD_HEADER.unpack_from, RECORD_HEADER.size
    block = index & ~0xFFFFFFFF  # indices are below 2**32 in practice: such a log would be > 36 GiB
    for pos in range(damaged_at + 1, end - MIN_RECORD_LEN + 1):
        length, crc = header(data, pos)
        start = pos + head_len
        if length == 0 or length > MAX_RECORD_LEN or start + length > end:
            continue
        payload = view[start : start + length]
        try:
            msgpack.unpackb(payload)
        except Exception:
            continue
        base = zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(epoch, block, length)))
        candidate = block | _gf2_apply(_index_of_delta(), _undo_zero_bytes(length, crc ^ base))
        if index <= candidate <= index + (pos - damaged_at) // MIN_RECORD_LEN and (
            zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(epoch, candidate, length))) == crc
        ):
            return pos, candidate
    return None


def _gf2_apply(columns: list[int], vector: int) -> int:
    """A 32x32 bit matrix (``columns[j]`` is the image of bit j) times a 32-bit vector."""
    out = 0
    for column in columns:
        if not vector:
            break
        if vector & 1:
            out ^= column
        vector >>= 1
    return out


def _gf2_inverse(columns: list[int]) -> list[int]:
    pairs = [(column, 1 << j) for j, column in enumerate(columns)]  # (image, preimage)
    for bit in range(32):
        pivot = next(i for i in range(bit, 32) if pairs[i][0] >> bit & 1)
        pairs[bit], pairs[pivot] = pairs[pivot], pairs[bit]
        image, pre = pairs[bit]
        for i in range(32):
            if i != bit and pairs[i][0] >> bit & 1:
                pairs[i] = (pairs[i][0] ^ image, pairs[i][1] ^ pre)
    return [pre for _, pre in pairs]


@functools.cache
def _undo_zero_byte_powers() -> list[list[int]]:
    """The inverse of ADVANCE over 2**j zero bytes, for every j a record length can use."""
    advance_one = [zlib.crc32(b"\0", 1 << j) ^ zlib.crc32(b"\0", 0) for j in range(32)]
    powers = [_gf2_inverse(advance_one)]
    while len(powers) < MAX_RECORD_LEN.bit_length():
        last = powers[-1]
        powers.append([_gf2_apply(last, column) for column in last])
    return powers


def _undo_zero_bytes(length: int, vector: int) -> int:
    for j, matrix in enumerate(_undo_zero_byte_powers()):
        if length >> j & 1:
            vector = _gf2_apply(matrix, vector)
    return vector


@functools.cache
def _index_of_delta() -> list[int]:
    zero = zlib.crc32(_CRC_PREFIX.pack(0, 0, 0))
    return _gf2_inverse([zlib.crc32(_CRC_PREFIX.pack(0, 1 << j, 0)) ^ zero for j in range(32)])


# --- the snapshot -----------------------------------------------------------------------------


def encode_snapshot(epoch: int, obj) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return FILE_HEADER.pack(SNAPSHOT_MAGIC, epoch) + SNAPSHOT_CRC.pack(zlib.crc32(payload)) + payload


def decode_snapshot(data: bytes, epoch: int):
    head = FILE_HEADER.size + SNAPSHOT_CRC.size
    if len(data) < head:
        raise WalError(f"snapshot {epoch} is truncated")
    magic, file_epoch = FILE_HEADER.unpack_from(data)
    (crc,) = SNAPSHOT_CRC.unpack_from(data, FILE_HEADER.size)
    if magic != SNAPSHOT_MAGIC or file_epoch != epoch or zlib.crc32(data[head:]) != crc:
        raise WalError(
            f"{snapshot_name(epoch)} is damaged; the log after it cannot be replayed without it. "
            "Move the WAL directory aside and start with an empty one (the old one stays readable for inspection)."
        )
    return msgpack.unpackb(data[head:], raw=False, use_list=True, strict_map_key=False)


# --- what a WAL directory holds -----------------------------------------------------------------

CORRUPT = "corrupt"  # invalid bytes followed by records that verify
BAD_CONTENT = "bad_content"  # a record that verifies but cannot be decoded or replayed
NO_SNAPSHOT = "no_snapshot"  # a log with records whose snapshot is missing


@dataclass
class Damage:
    """Records that verify but cannot be replayed, and why. The records of ``file`` before
    ``index`` are replayed (for NO_SNAPSHOT, none are); from ``index`` on, none is."""

    kind: str
    file: str  # the log's name in the WAL directory
    offset: int  # the byte where the unusable part starts
    index: int  # the first record not replayed
    problem: str
    valid_after: int  # records from there on that verify, not replayed
    set_aside: str | None = None  # where the file was moved (--wal-repair)

    def describe(self) -> str:
        if self.kind == NO_SNAPSHOT:
            return (f"{self.file} holds {self.valid_after} record(s) but {self.problem}, "
                    "so none of them can be replayed")
        if self.kind == BAD_CONTENT:
            after = f"; {self.valid_after} record(s) after it verify" if self.valid_after else ""
            return f"{self.file} is damaged: {self.problem}{after}"
        return (f"{self.file} is damaged: {self.problem}, and {self.valid_after} record(s) after it verify, "
                "so it is not a torn last write; they cannot be replayed without the record(s) the damage destroyed")

    def jsonable(self) -> dict:
        return {"kind": self.kind, "file": self.file, "offset": self.offset, "record": self.index,
                "problem": self.problem, "valid_records_after": self.valid_after, "set_aside": self.set_aside,
                "description": self.describe()}


@dataclass
class Recovery:
    """What reading a WAL directory found: the snapshot, the valid records after it, and any damage."""

    epoch: int
    snapshot: object | None
    records: list
    cut_bytes: int = 0  # a torn tail: invalid bytes at the end of the newest log, nothing valid after
    problem: str | None = None  # what the torn tail is
    record_count: int = 0  # records replayed from the log (the index the next record gets)
    damage: list[Damage] = field(default_factory=list)  # what could not be replayed
    notes: list[str] = field(default_factory=list)  # what a start changed in the directory, and why
