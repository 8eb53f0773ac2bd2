"""The trio shell of the WAL: concurrent appenders share one write + fdatasync (group commit)."""

from __future__ import annotations

import trio

from proxy.core.wal_format import WalError
from proxy.trio.wal_store import WalStore


class GroupCommitWal:
    """``await append(obj)`` returns once obj is durable; concurrent appends share one fdatasync.

    Records are encoded (and so ordered) at the moment ``append`` is called, so each caller's
    records keep their order. Whoever finds no write in progress becomes the writer and keeps
    writing until the buffer is empty; everyone else waits for the write that covers them.
    Every ``checkpoint_every`` records the writer checkpoints ``snapshot_source()``, which must
    describe exactly the records appended so far (the shadow hook applies each record to the
    shadow in the same trio task that appends it, with no await in between).

    A cancelled ``append`` raises ``Cancelled``; its record was ordered when it was called and
    becomes durable with a later append (or, if it was being written, already is).
    """

    def __init__(self, store: WalStore, snapshot_source=None, checkpoint_every: int = 100_000):
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
            if self._writing:
                await self._progress.wait()
            else:
                # The writer's work is shielded, so this is the writer's only chance to see a
                # cancellation: without it, a cancelled task that keeps appending would write
                # (and fdatasync, and checkpoint) everything it had left. Its record stays
                # buffered, in order, and goes out with the next append.
                await trio.lowlevel.checkpoint_if_cancelled()
                await self._write_until_empty()

    async def _write_until_empty(self) -> None:
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
            await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            self._failure = exc
            raise WalError(f"WAL write to {self.store.directory!r} failed: {exc}") from exc

    async def _checkpoint(self) -> None:
        snapshot = self._snapshot_source()  # no await since the buffer drained: matches the log
        epoch = self.store.start_epoch()
        await self._guarded(self.store.checkpoint, epoch, snapshot)
        self.checkpoints += 1
