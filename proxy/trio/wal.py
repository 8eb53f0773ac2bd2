"""The shadow's write-ahead log: record format, recovery, checkpoints, and group commit.

Layout of ``--wal-dir``:
    snapshot-<epoch>.bin   the shadow as it was when the log of <epoch> started (absent for epoch 0)
    wal-<epoch>.log        records appended since that snapshot

A log file starts with ``MAGIC`` and the epoch (u64). Each record is
    u32 payload length | u32 crc32(epoch, record index, length, payload) | msgpack payload
so a torn write, a flipped bit, or a record copied from another position or epoch fails the
check. Recovery keeps the longest valid prefix and cuts the rest (and says so). A checkpoint
writes the next epoch's snapshot, starts its log, and only then deletes the old files, so a
crash at any point leaves one complete (snapshot, log) pair.

The record codec and the scanner are sans-IO; ``WalStore`` does the file work synchronously;
``GroupCommitWal`` is the trio shell: concurrent appenders share one write + fdatasync.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass

import msgpack

MAGIC = b"HSMPWAL1"
SNAPSHOT_MAGIC = b"HSMPSNP1"
FILE_HEADER = struct.Struct(">8sQ")  # magic, epoch
RECORD_HEADER = struct.Struct(">II")  # payload length, crc32
MAX_RECORD_LEN = 1 << 24
FILE_MODE = 0o600

_LOG_NAME = re.compile(r"^wal-(\d+)\.log$")
_SNAPSHOT_NAME = re.compile(r"^snapshot-(\d+)\.bin$")


class WalError(Exception):
    """The WAL directory cannot be used (unreadable, not ours, or the disk refused a write)."""


# --- sans-IO record codec ------------------------------------------------------------------


_CRC_PREFIX = struct.Struct(">QQI")  # epoch, record index, payload length: bound into each checksum


def _crc(epoch: int, index: int, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(epoch, index, len(payload))))


def encode_record(epoch: int, index: int, obj) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    if len(payload) > MAX_RECORD_LEN:
        raise ValueError(f"WAL record of {len(payload)} bytes exceeds the {MAX_RECORD_LEN}-byte limit")
    return RECORD_HEADER.pack(len(payload), _crc(epoch, index, payload)) + payload


def file_header(epoch: int) -> bytes:
    return FILE_HEADER.pack(MAGIC, epoch)


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


def encode_snapshot(epoch: int, obj) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return FILE_HEADER.pack(SNAPSHOT_MAGIC, epoch) + struct.pack(">I", zlib.crc32(payload)) + payload


def decode_snapshot(data: bytes, epoch: int):
    head = FILE_HEADER.size + 4
    if len(data) < head:
        raise WalError(f"snapshot {epoch} is truncated")
    magic, file_epoch = FILE_HEADER.unpack_from(data)
    (crc,) = struct.unpack_from(">I", data, FILE_HEADER.size)
    if magic != SNAPSHOT_MAGIC or file_epoch != epoch or zlib.crc32(data[head:]) != crc:
        raise WalError(
            f"snapshot-{epoch}.bin is damaged; the log after it cannot be replayed without it. "
            "Move the WAL directory aside and start with an empty one (the old one stays readable for inspection)."
        )
    return msgpack.unpackb(data[head:], raw=False, use_list=True, strict_map_key=False)


# --- the file store (synchronous; called from a worker thread by the shell) ------------------


@dataclass
class Recovery:
    """What ``WalStore.open`` found: the snapshot, the valid records after it, and any damage."""

    epoch: int
    snapshot: object | None
    records: list
    cut_bytes: int = 0
    problem: str | None = None
    record_count: int = 0  # valid records in the log (the index the next record gets)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _epochs(directory: str) -> tuple[list[int], list[int]]:
    logs, snaps = [], []
    for name in os.listdir(directory):
        if m := _LOG_NAME.match(name):
            logs.append(int(m.group(1)))
        elif m := _SNAPSHOT_NAME.match(name):
            snaps.append(int(m.group(1)))
    return sorted(logs), sorted(snaps)


def read_state(directory: str, *, repair: bool, make_sink=None) -> Recovery:
    """Load the newest complete snapshot and the valid records of its log.

    With ``repair`` (the proxy starting) the invalid tail is cut and stale files are removed;
    without it (``hsmproxy state`` on a live proxy's directory) nothing is touched.
    With ``make_sink(snapshot) -> callable``, records go to that callable instead of a list.
    """
    if not os.path.isdir(directory):
        raise WalError(f"WAL directory {directory!r} does not exist; create it or pass another --wal-dir")
    for attempt in range(3):  # a live proxy may swap epochs under a read-only reader
        logs, snaps = _epochs(directory)
        snapshot, epoch = None, 0
        try:
            if snaps:
                epoch = snaps[-1]
                with open(os.path.join(directory, f"snapshot-{epoch}.bin"), "rb") as f:
                    snapshot = decode_snapshot(f.read(), epoch)
            log_path = os.path.join(directory, f"wal-{epoch}.log")
            try:
                with open(log_path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                if snaps and not repair:
                    raise  # mid-checkpoint: read again
                data = b""  # a crash between writing the snapshot and its log, or a new directory
        except FileNotFoundError:
            continue
        result = scan_log(data, epoch, make_sink(snapshot) if make_sink is not None else None)
        rec = Recovery(epoch, snapshot, result.records, len(data) - result.valid_len, result.problem, result.count)
        if repair:
            _repair(directory, epoch, log_path, data, result, logs, snaps)
        return rec
    raise WalError(f"WAL directory {directory!r} kept changing while being read; try again")


def _repair(directory, epoch, log_path, data, result: ScanResult, logs, snaps) -> None:
    if len(data) < FILE_HEADER.size:
        _write_new_file(log_path, file_header(epoch))
    elif result.valid_len < len(data):
        fd = os.open(log_path, os.O_WRONLY)
        try:
            os.ftruncate(fd, result.valid_len)
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chmod(log_path, FILE_MODE)
    for old in logs:
        if old != epoch:
            os.unlink(os.path.join(directory, f"wal-{old}.log"))
    for old in snaps:
        if old != epoch:
            os.unlink(os.path.join(directory, f"snapshot-{old}.bin"))
    for name in os.listdir(directory):
        if name.endswith(".tmp"):
            os.unlink(os.path.join(directory, name))
    _fsync_dir(directory)


class WalStore:
    """An open log: encodes records in order and makes batches of them durable."""

    def __init__(self, directory: str, epoch: int, record_count: int):
        self.directory = directory
        self.epoch = epoch
        self.index = record_count  # the next record's index in the current epoch
        self._fd = os.open(os.path.join(directory, f"wal-{epoch}.log"), os.O_WRONLY | os.O_APPEND)

    @classmethod
    def open(cls, directory: str) -> tuple["WalStore", Recovery]:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        recovery = read_state(directory, repair=True)
        return cls(directory, recovery.epoch, len(recovery.records)), recovery

    def encode(self, obj) -> bytes:
        data = encode_record(self.epoch, self.index, obj)
        self.index += 1
        return data

    def write_durably(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fdatasync(self._fd)

    def start_epoch(self) -> int:
        """Switch encoding to the next epoch (records encoded from now on belong to it)."""
        self.epoch += 1
        self.index = 0
        return self.epoch

    def checkpoint(self, epoch: int, snapshot_obj) -> None:
        """Make ``epoch`` current: its snapshot, then its empty log, then delete the old epoch."""
        d = self.directory
        tmp = os.path.join(d, f"snapshot-{epoch}.bin.tmp")
        _write_new_file(tmp, encode_snapshot(epoch, snapshot_obj))
        _write_new_file(os.path.join(d, f"wal-{epoch}.log.tmp"), file_header(epoch))
        os.rename(os.path.join(d, f"wal-{epoch}.log.tmp"), os.path.join(d, f"wal-{epoch}.log"))
        os.rename(tmp, os.path.join(d, f"snapshot-{epoch}.bin"))
        _fsync_dir(d)
        new_fd = os.open(os.path.join(d, f"wal-{epoch}.log"), os.O_WRONLY | os.O_APPEND)
        os.close(self._fd)
        self._fd = new_fd
        for old in (epoch - 1,):
            for name in (f"wal-{old}.log", f"snapshot-{old}.bin"):
                try:
                    os.unlink(os.path.join(d, name))
                except FileNotFoundError:
                    pass
        _fsync_dir(d)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --- the trio shell: group commit -----------------------------------------------------------


class GroupCommitWal:
    """``await append(obj)`` returns once obj is durable; concurrent appends share one fdatasync.

    Records are encoded (and so ordered) at the moment ``append`` is called, so each caller's
    records keep their order. Whoever finds no write in progress becomes the writer and keeps
    writing until the buffer is empty; everyone else waits for the write that covers them.
    Every ``checkpoint_every`` records the writer checkpoints ``snapshot_source()``, which must
    describe exactly the records appended so far (the shadow hook applies each record to the
    shadow in the same trio task that appends it, with no await in between).
    """

    def __init__(self, store: WalStore, snapshot_source=None, checkpoint_every: int = 100_000):
        import trio

        self._trio = trio
        self.store = store
        self._snapshot_source = snapshot_source
        self.checkpoint_every = checkpoint_every
        self._buffer: list[bytes] = []
        self._appended = 0
        self._durable = 0
        self._writing = False
        self._progress = trio.Event()
        self._failure: BaseException | None = None
        self.syncs = 0
        self.checkpoints = 0
        self.bytes_written = 0

    async def append(self, obj) -> None:
        if self._failure is not None:
            raise WalError(f"the WAL failed earlier ({self._failure}); state is no longer being recorded")
        self._buffer.append(self.store.encode(obj))
        self._appended += 1
        mine = self._appended
        while self._durable < mine:
            if self._failure is not None:
                raise WalError(f"WAL write failed: {self._failure}") from self._failure
            if not self._writing:
                await self._write_until_empty()
            else:
                await self._progress.wait()

    async def _write_until_empty(self) -> None:
        trio = self._trio
        self._writing = True
        try:
            # Shielded: a write or a checkpoint cut off halfway would leave the file and the
            # encoder disagreeing (records are encoded for their position and epoch). A cancelled
            # writer finishes the buffer first; that work is bounded by what was appended.
            with trio.CancelScope(shield=True):
                while self._buffer:
                    batch = b"".join(self._buffer)
                    self._buffer.clear()
                    covered = self._appended
                    await self._guarded(self.store.write_durably, batch)
                    self.syncs += 1
                    self.bytes_written += len(batch)
                    self._durable = covered
                    self._progress.set()
                    self._progress = trio.Event()
                    if not self._buffer and self._snapshot_source and self.store.index >= self.checkpoint_every:
                        await self._checkpoint()
        finally:
            self._writing = False
            self._progress.set()
            self._progress = trio.Event()

    async def _guarded(self, fn, *args) -> None:
        try:
            await self._trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            self._failure = exc
            raise WalError(f"WAL write to {self.store.directory!r} failed: {exc}") from exc

    async def _checkpoint(self) -> None:
        snapshot = self._snapshot_source()  # no await since the buffer drained: matches the log
        epoch = self.store.start_epoch()
        await self._guarded(self.store.checkpoint, epoch, snapshot)
        self.checkpoints += 1

    async def checkpoint_now(self) -> None:
        """Checkpoint at once (used on clean shutdown and by tests)."""
        while self._writing or self._buffer:
            if not self._writing:
                await self._write_until_empty()
            else:
                await self._progress.wait()
        self._writing = True
        try:
            with self._trio.CancelScope(shield=True):
                await self._checkpoint()
        finally:
            self._writing = False
            self._progress.set()
            self._progress = self._trio.Event()
