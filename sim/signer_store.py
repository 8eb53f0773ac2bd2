"""Durable per-channel state of the simulated signer: one JSON file per channel, replaced
atomically (write, fsync, rename, fsync the directory) before any reply leaves, as VLS persists
before it releases a signature. Files are 0600. ``read_channels`` reads them back without a
running signer (chaos compares them with the proxy's shadow)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .signer_core import ChannelRecord

STATE_DIR = "sim-signer-state"


def read_channels(workdir: Path) -> list[ChannelRecord]:
    """The channel records a signer working in ``workdir`` persisted (none when it saved none).
    Reads only: nothing is created or locked. ValueError names a file that cannot be read."""
    records = []
    for path in sorted((workdir / STATE_DIR).glob("*.json")):
        try:
            records.append(ChannelRecord.from_json(json.loads(path.read_text())))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}: unreadable signer state ({exc}); restore it from a backup") from None
    return records


class SignerStore:
    def __init__(self, workdir: Path, fsync: bool = True):
        self.workdir = workdir
        self.dir = workdir / STATE_DIR
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.fsync = fsync

    def lock(self) -> None:
        """Exclusive, held until exit; blocks while an older signer of this directory winds down."""
        self._lock = open(self.dir / "lock", "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def load_all(self) -> list[ChannelRecord]:
        return read_channels(self.workdir)

    def delete(self, record: ChannelRecord) -> None:
        (self.dir / f"{record.key}.json").unlink(missing_ok=True)

    def save(self, record: ChannelRecord) -> None:
        path = self.dir / f"{record.key}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record.to_json()))  # dumps uses the C encoder; dump would not
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
