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

The file work (recovery, checkpoints, fsync) is ``proxy.trio.wal_store``; the trio group commit
is ``proxy.trio.group_commit``.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

import msgpack

MAGIC = b"HSMPWAL1"
SNAPSHOT_MAGIC = b"HSMPSNP1"
FILE_HEADER = struct.Struct(">8sQ")  # magic, epoch
RECORD_HEADER = struct.Struct(">II")  # payload length, crc32
SNAPSHOT_CRC = struct.Struct(">I")  # crc32 of the snapshot payload, after the file header
MAX_RECORD_LEN = 1 << 24

_CRC_PREFIX = struct.Struct(">QQI")  # epoch, record index, payload length: bound into each checksum
_LOG_NAME = re.compile(r"^wal-(\d+)\.log$")
_SNAPSHOT_NAME = re.compile(r"^snapshot-(\d+)\.bin$")


class WalError(Exception):
    """The WAL directory cannot be used (unreadable, not ours, or the disk refused a write)."""


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
    valid_len: int  # bytes of the file that hold a valid header and valid records
    problem: str | None = None  # why the scan stopped before the end, if it did
    count: int = 0  # valid records


def scan_log(data: bytes, expected_epoch: int | None = None, sink=None) -> ScanResult:
    """Decode every valid record of a log file's bytes; stop at the first invalid one.

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
            return ScanResult(records, pos, f"torn record header at byte {pos}", count)
        length, crc = header(data, pos)
        start = pos + head_len
        if length > MAX_RECORD_LEN or start + length > end:
            return ScanResult(records, pos, f"torn record at byte {pos} (length {length})", count)
        payload = view[start : start + length]
        if crc32(payload, crc32(prefix(epoch, count, length))) != crc:
            return ScanResult(records, pos, f"checksum mismatch in record {count} at byte {pos}", count)
        try:
            record = unpackb(payload, raw=False, use_list=True)
        except Exception as exc:  # a valid checksum over bad msgpack means a bug, not a torn write
            return ScanResult(records, pos, f"undecodable record {count} at byte {pos}: {exc}", count)
        keep(record)
        count += 1
        pos = start + length
    return ScanResult(records, pos, None, count)


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


@dataclass
class Recovery:
    """What reading a WAL directory found: the snapshot, the valid records after it, and any damage."""

    epoch: int
    snapshot: object | None
    records: list
    cut_bytes: int = 0
    problem: str | None = None
    record_count: int = 0  # valid records in the log (the index the next record gets)
