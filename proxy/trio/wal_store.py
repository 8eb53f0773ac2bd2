"""The WAL's files: recovery, durable appends and checkpoints, synchronously.

The format is ``proxy.core.wal_format``. Recovery replays the longest valid prefix of the newest
log. A torn tail (invalid bytes at its end, nothing valid after them: a write a crash cut short)
is cut when the proxy starts. Damage (records that verify but cannot be replayed: invalid bytes
followed by valid records, a record with unexpected content, a log whose snapshot is missing)
stops the start, unless the operator asks to set the damaged files aside: they are renamed,
never deleted. A checkpoint writes the next epoch's snapshot, starts its log, and only then
deletes the old files, so a crash at any point leaves one complete (snapshot, log) pair. No file
is deleted unless it holds no record or its records are in a durable snapshot, and each start
says what it changed. Files are created 0600; directory entries are fsynced before anything
relies on them. One proxy at a time: a writer holds an exclusive lock on ``proxy.lock`` in the
directory for its whole life (readers such as ``hsmproxy state`` take none).

Nothing here is async: the proxy calls these from a worker thread (``proxy.trio.group_commit``),
``hsmproxy state`` and the start-up path call them directly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from proxy.core.wal_format import (
    BAD_CONTENT,
    CORRUPT,
    FILE_HEADER,
    NO_SNAPSHOT,
    Damage,
    Recovery,
    ScanResult,
    WalDamaged,
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
LOCK_NAME = "proxy.lock"
_READ_ATTEMPTS = 3  # a live proxy may swap epochs under a read-only reader


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _scan(name: str, data: bytes, epoch: int, sink=None) -> ScanResult:
    try:
        return scan_log(data, epoch, sink)
    except WalError as exc:  # not ours, or the wrong epoch: name the file
        raise WalError(f"{name}: {exc}") from None


def _count_records(name: str, data: bytes, epoch: int) -> int:
    result = _scan(name, data, epoch, sink=lambda record: None)
    return result.count + result.valid_after


def read_state(directory: str, *, repair: bool, set_aside_damage: bool = False, make_sink=None) -> Recovery:
    """Load the newest complete snapshot and the records of its log that can be replayed.

    Without ``repair`` (``hsmproxy state`` on a live or a dead proxy's directory) nothing is
    touched, and damage is reported in ``Recovery.damage``. With ``repair`` (the proxy starting)
    a torn tail is cut and the files the current epoch does not need are removed, each said in
    ``Recovery.notes``; damage raises ``WalDamaged`` before anything is touched, unless
    ``set_aside_damage``: then each damaged log is renamed aside (never deleted) and the current
    log keeps the records before its damage.
    With ``make_sink(snapshot) -> callable``, records go to that callable instead of a list.
    """
    if not os.path.isdir(directory):
        raise WalError(f"WAL directory {directory!r} does not exist; create it or pass another --wal-dir")
    for attempt in range(_READ_ATTEMPTS):
        settled = repair or attempt == _READ_ATTEMPTS - 1  # a reader's last attempt takes what it sees
        logs, snaps = epochs_of(os.listdir(directory))
        epoch = snaps[-1] if snaps else 0
        try:
            snapshot = decode_snapshot(_read(os.path.join(directory, snapshot_name(epoch))), epoch) if snaps else None
        except FileNotFoundError:
            continue
        log_path = os.path.join(directory, log_name(epoch))
        try:
            data: bytes | None = _read(log_path)
        except FileNotFoundError:
            if snaps and not settled:
                continue  # mid-checkpoint: read again
            data = None
        # Logs of later epochs than the newest snapshot: a checkpoint renames its empty log before
        # its snapshot, so an empty one is a crash between the two. One with records has lost the
        # snapshot they apply to (or, for a reader, a live proxy renamed it meanwhile).
        later = {e: _read_if_present(os.path.join(directory, log_name(e))) for e in logs if e > epoch}
        orphans = {e: _count_records(log_name(e), d, e) for e, d in later.items()
                   if d is not None and len(d) > FILE_HEADER.size}
        if orphans and not settled:
            continue
        break
    else:
        raise WalError(f"WAL directory {directory!r} kept changing while being read; try again")

    result = _scan(log_name(epoch), data or b"", epoch, make_sink(snapshot) if make_sink is not None else None)
    rec = Recovery(epoch, snapshot, result.records, record_count=result.count)
    if data is None and snaps:
        rec.notes.append(f"{log_name(epoch)} is missing: the state is {snapshot_name(epoch)} alone "
                         "(if the log was deleted, the records it held are lost)")
    if result.torn_tail:
        rec.cut_bytes, rec.problem = len(data) - result.valid_len, result.problem
    elif result.problem is not None:
        rec.damage.append(Damage(BAD_CONTENT if result.bad_content else CORRUPT, log_name(epoch), result.valid_len,
                                 result.count, result.problem, result.valid_after))
        if result.bad_content and make_sink is not None:
            # The sink may have half-applied the record it refused: replay the good prefix into a fresh one.
            scan_log(data[: result.valid_len], epoch, make_sink(snapshot))
    for e, count in sorted(orphans.items()):
        missing = f"{snapshot_name(e)}, the state they apply to, is missing"
        rec.damage.append(Damage(NO_SNAPSHOT, log_name(e), 0, 0, missing, count))
    if repair:
        if rec.damage and not set_aside_damage:
            raise WalDamaged(directory, rec.damage)
        _start_up(directory, rec, data, logs, snaps, later)
    return rec


def _read_if_present(path: str) -> bytes | None:
    try:
        return _read(path)
    except FileNotFoundError:
        return None


def _start_up(directory: str, rec: Recovery, data: bytes | None, logs: list[int], snaps: list[int],
              later: dict[int, bytes | None]) -> None:
    """Make the directory hold exactly the current epoch's files, saying what changed and why."""
    epoch, notes = rec.epoch, rec.notes
    log_path = os.path.join(directory, log_name(epoch))
    _fsync_dir(directory)  # the snapshot just read is durable before anything it covers goes
    for damage in rec.damage:
        _set_aside(directory, damage, data, notes)
    if data is None or len(data) < FILE_HEADER.size:
        _write_new_file(log_path, file_header(epoch))  # a new directory, or a torn header: no record
        if data:
            notes.append(f"rewrote the torn header of {log_name(epoch)} ({len(data)} bytes, no record)")
    elif rec.cut_bytes:
        fd = os.open(log_path, os.O_WRONLY)
        try:
            os.ftruncate(fd, len(data) - rec.cut_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        notes.append(f"cut {rec.cut_bytes} byte(s) at the end of {log_name(epoch)}: {rec.problem} "
                     "(a write cut short by a crash; nothing valid follows it)")
    os.chmod(log_path, FILE_MODE)
    for old in logs:
        if old < epoch:
            _remove(directory, log_name(old), f"its records are in {snapshot_name(epoch)}", notes)
        elif old > epoch and old in later and later[old] is not None and len(later[old]) <= FILE_HEADER.size:
            _remove(directory, log_name(old), "an empty log left by an interrupted checkpoint", notes)
    for old in snaps:
        if old != epoch:
            _remove(directory, snapshot_name(old), f"{snapshot_name(epoch)} is newer", notes)
    for name in sorted(os.listdir(directory)):
        if name.endswith(".tmp"):
            _remove(directory, name, "left by an interrupted checkpoint or repair", notes)
    _fsync_dir(directory)


def _remove(directory: str, name: str, why: str, notes: list[str]) -> None:
    os.unlink(os.path.join(directory, name))
    notes.append(f"removed {name}: {why}")


def _set_aside(directory: str, damage: Damage, data: bytes | None, notes: list[str]) -> None:
    """Rename a damaged log to ``<name>.damaged-<UTC time>`` (0600, never deleted). The current
    log's name then holds the records before the damage: the link comes first and the prefix
    replaces the name atomically, so at every moment the name holds either the whole damaged
    file or its good prefix, and the damaged bytes are under the new name."""
    path = os.path.join(directory, damage.file)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = f"{damage.file}.damaged-{stamp}", 1
    while os.path.exists(os.path.join(directory, aside)):
        n += 1
        aside = f"{damage.file}.damaged-{stamp}-{n}"
    aside_path = os.path.join(directory, aside)
    if damage.kind == NO_SNAPSHOT:
        os.rename(path, aside_path)
        kept = f"none of its {damage.valid_after} record(s) was replayed"
    else:
        os.link(path, aside_path)
        _fsync_dir(directory)
        _write_new_file(path + ".tmp", data[: damage.offset])
        os.replace(path + ".tmp", path)
        kept = (f"{damage.file} now holds its first {damage.index} record(s) ({damage.offset} bytes), the ones "
                f"before the damage; the {damage.valid_after} record(s) that verify after it are only in {aside}")
    os.chmod(aside_path, FILE_MODE)
    _fsync_dir(directory)
    damage.set_aside = aside
    notes.append(f"moved {damage.file} aside to {aside} (kept, mode 0600): {damage.describe()}; {kept}")


@contextlib.contextmanager
def locked_directory(directory: str):
    """Take ``directory`` for this process (yields the lock's fd, for ``WalStore``), or raise
    ``WalError`` naming the proxy that has it; a start that fails inside the block lets go again.

    An exclusive flock on ``LOCK_NAME``, held as long as the fd is open: the kernel drops it when
    the process ends however it ends, so a proxy restarted after a SIGKILL gets it at once. The
    fd is close-on-exec: the signer a wrapper starts must not keep the directory locked after its
    proxy is gone. The holder writes its pid in the file, for the message the next one gives."""
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            who = f"pid {holder}" if holder.isdigit() else "a proxy that is starting"
            raise WalError(f"WAL directory {directory!r} is in use by another proxy ({who}); two proxies must "
                           "not write one WAL: stop that one first, or pass another --wal-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    except BaseException:
        os.close(fd)
        raise


def wait_released(directory: str, timeout: float) -> bool:
    """Wait until no proxy holds ``directory`` (its proxy exited, having written all it will);
    False if one still does after ``timeout`` seconds. A flock sends no notice, so this polls."""
    try:
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # no proxy ever took it
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
    finally:
        os.close(fd)  # drops our shared lock with it


class WalStore:
    """An open log: encodes records in order and makes batches of them durable."""

    def __init__(self, directory: str, epoch: int, record_count: int, *, lock_fd: int = -1):
        self.directory = directory
        self.epoch = epoch
        self.index = record_count  # the next record's index in the current epoch
        self._lock_fd = lock_fd  # from locked_directory(); released by close()
        self._fd = os.open(os.path.join(directory, log_name(epoch)), os.O_WRONLY | os.O_APPEND)

    @classmethod
    def open(cls, directory: str, *, set_aside_damage: bool = False) -> tuple["WalStore", Recovery]:
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
        with locked_directory(directory) as lock_fd:
            recovery = read_state(directory, repair=True, set_aside_damage=set_aside_damage)
            store = cls(directory, recovery.epoch, len(recovery.records), lock_fd=lock_fd)
        return store, recovery

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
        """Make ``epoch`` current: its snapshot, then its empty log, then delete the old epoch.

        Deleting the old log loses nothing: ``snapshot_obj`` describes every record appended to
        it (the caller takes it once the buffer is written), and the snapshot's data and name
        are fsynced first. The log is renamed before the snapshot, so a log of an epoch whose
        snapshot is missing is empty (a start removes it) unless something else went wrong."""
        d = self.directory
        snapshot_path, log_path = os.path.join(d, snapshot_name(epoch)), os.path.join(d, log_name(epoch))
        for path in (log_path, snapshot_path):
            if os.path.exists(path):  # never renamed over: whatever wrote it (another proxy?) may need it
                raise FileExistsError(errno.EEXIST, f"{os.path.basename(path)} already exists (is another proxy "
                                      "using this WAL directory?); not overwriting it", path)
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
        if self._lock_fd >= 0:  # the directory is free for the next proxy
            os.close(self._lock_fd)
            self._lock_fd = -1
