"""The WAL's files: recovery, durable appends and checkpoints, synchronously.

The format is ``proxy.core.wal_format``. Recovery keeps the longest valid prefix of the log and
cuts the rest (and says so). A checkpoint writes the next epoch's snapshot, starts its log, and
only then deletes the old files, so a crash at any point leaves one complete (snapshot, log)
pair. Files are created 0600; directory entries are fsynced before anything relies on them.

Nothing here is async: the proxy calls these from a worker thread (``proxy.trio.group_commit``),
``hsmproxy state`` and the start-up path call them directly.
"""

from __future__ import annotations

import os

from proxy.core.wal_format import (
    FILE_HEADER,
    Recovery,
    ScanResult,
    WalError,
    decode_snapshot,
    encode_record,
    encode_snapshot,
    epochs_of,
    file_header,
    log_name,
    scan_log,
    snapshot_name,
)

FILE_MODE = 0o600
DIR_MODE = 0o700


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


def read_state(directory: str, *, repair: bool, make_sink=None) -> Recovery:
    """Load the newest complete snapshot and the valid records of its log.

    With ``repair`` (the proxy starting) the invalid tail is cut and stale files are removed;
    without it (``hsmproxy state`` on a live proxy's directory) nothing is touched.
    With ``make_sink(snapshot) -> callable``, records go to that callable instead of a list.
    """
    if not os.path.isdir(directory):
        raise WalError(f"WAL directory {directory!r} does not exist; create it or pass another --wal-dir")
    for attempt in range(3):  # a live proxy may swap epochs under a read-only reader
        logs, snaps = epochs_of(os.listdir(directory))
        snapshot, epoch = None, 0
        try:
            if snaps:
                epoch = snaps[-1]
                with open(os.path.join(directory, snapshot_name(epoch)), "rb") as f:
                    snapshot = decode_snapshot(f.read(), epoch)
            log_path = os.path.join(directory, log_name(epoch))
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
            os.unlink(os.path.join(directory, log_name(old)))
    for old in snaps:
        if old != epoch:
            os.unlink(os.path.join(directory, snapshot_name(old)))
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
        self._fd = os.open(os.path.join(directory, log_name(epoch)), os.O_WRONLY | os.O_APPEND)

    @classmethod
    def open(cls, directory: str) -> tuple["WalStore", Recovery]:
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
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
        snapshot_path, log_path = os.path.join(d, snapshot_name(epoch)), os.path.join(d, log_name(epoch))
        _write_new_file(snapshot_path + ".tmp", encode_snapshot(epoch, snapshot_obj))
        _write_new_file(log_path + ".tmp", file_header(epoch))
        os.rename(log_path + ".tmp", log_path)
        os.rename(snapshot_path + ".tmp", snapshot_path)
        _fsync_dir(d)
        new_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
        os.close(self._fd)
        self._fd = new_fd
        for name in (log_name(epoch - 1), snapshot_name(epoch - 1)):
            try:
                os.unlink(os.path.join(d, name))
            except FileNotFoundError:
                pass
        _fsync_dir(d)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
