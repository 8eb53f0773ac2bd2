"""The relay hook that keeps the shadow state, writes it ahead to the WAL, and guards.

Order of operations (the point of the whole project, applied to the proxy itself):
    request.before_forward: intent -> shadow.begin -> WAL append (durable) -> maybe Refuse (guard)
    reply.before_forward:   outcome -> shadow.finish -> WAL append (durable) -> the reply moves on
    connection closed:      (a channel inside the crash window) -> shadow.connection_ended -> WAL append
So the signer never sees a state-changing request the WAL does not hold, and the node never
sees an answer the WAL does not hold. Register this hook first.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time

import wire

from proxy.core.hooks import (
    CONN_CLOSED,
    REPLY_AFTER,
    REPLY_BEFORE,
    REQUEST_BEFORE,
    ROLE_MASTER,
    ConnContext,
    Exchange,
    FailClosed,
    Refuse,
)
from proxy.core.shadow import (
    CRASHED_IN_WINDOW,
    DIVERGENCE_KINDS,
    DOUBLE_SIGNED,
    GET_POINT,
    GUARD_REFUSED,
    PREVENTED,
    REFUTED,
    REJECTED,
    RESOLVED,
    RETRY_CHANGED,
    SIGN_REMOTE,
    SIGNED,
    SIGNER_REJECTED,
    SUCCESS_REPLY,
    UNANSWERED,
    Divergence,
    IntentError,
    Shadow,
    connection_end_record,
    divergences_jsonable,
    intent_from_request,
    intent_record,
    outcome_record,
    restart_record,
    shadow_jsonable,
    shadow_to_snapshot,
)
from proxy.core.shadow.transitions import KIND_BY_REQUEST
from proxy.core.wal_format import Recovery
from proxy.trio.group_commit import GroupCommitWal
from proxy.trio.shadow_recovery import recover
from proxy.trio.wal_store import WalStore, locked_directory

log = logging.getLogger("hsmproxy.shadow")

BAD_REQUEST = "hsmstatus_client_bad_request"
FORWARDED_KEPT = 4096  # signatures remembered as forwarded to the node (only the latest per channel matter)


# The requests the shadow tracks, by type: a long one it cannot read is refused by --guard.
TRACKED_REQUEST_TYPES = {wire.lookup(name).type: name for name in KIND_BY_REQUEST}


def _request_key(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()[:16]


class ShadowHook:
    """Feeds the relay's exchanges to a ``Shadow``; with a WAL, makes each step durable first."""

    # Where it acts; request.after_forward costs nothing then. reply.after_forward says that a
    # signature reached the node's socket (what a crash in the window reports).
    points = (REQUEST_BEFORE, REPLY_BEFORE, REPLY_AFTER)

    def __init__(self, shadow: Shadow, wal: GroupCommitWal | None = None, *, guard: bool = False,
                 run_id: int = 0, metrics=None, clock=time.time_ns):
        self.shadow = shadow
        self.wal = wal
        self.guard = guard
        self.metrics = metrics
        self.listeners: list = []  # callables taking a Divergence (trace, control API, tests)
        self._run_id = run_id
        self._clock = clock
        self._ops: dict[tuple[int, int], tuple[int, str]] = {}  # (conn_id, seq) -> (op_id, kind)
        self._by_request: dict[bytes, int] = {}  # request hash -> op_id, to match bad-request status
        # Signatures answered and on their way to the node: (conn_id, seq) -> op_id; and the
        # op_ids whose signature reached the node's socket (reply.after_forward), oldest first.
        self._signed_replies: dict[tuple[int, int], int] = {}
        self._forwarded: dict[int, None] = {}
        self.recovery: Recovery | None = None

    @classmethod
    def open(cls, wal_dir: str | None, *, guard: bool = False, metrics=None,
             checkpoint_every: int = 100_000, set_aside_damage: bool = False) -> "ShadowHook":
        """Recover the shadow from ``wal_dir`` (or start an in-memory one) and record this start.

        Raises ``WalDamaged`` when records that verify cannot be replayed (the shadow would miss
        them), unless ``set_aside_damage``: then the damaged files are moved aside and the start
        continues from the records before the damage, saying so in the log."""
        run_id = int.from_bytes(os.urandom(4), "big") >> 1  # tells this run's connections from older ones
        if wal_dir is None:
            log.warning("shadow state in memory only (no --wal-dir): it is lost when the proxy stops")
            return cls(Shadow(), None, guard=guard, run_id=run_id, metrics=metrics)
        os.makedirs(wal_dir, mode=0o700, exist_ok=True)
        with locked_directory(wal_dir) as lock_fd:  # one proxy per WAL, for this process's life
            shadow, recovery = recover(wal_dir, repair=True, set_aside_damage=set_aside_damage)
            store = WalStore(wal_dir, recovery.epoch, recovery.record_count, lock_fd=lock_fd)
        stranded = shadow.restart()
        store.write_durably(store.encode(restart_record(time.time_ns())))
        hook = cls(shadow, None, guard=guard, run_id=run_id, metrics=metrics)
        hook.wal = GroupCommitWal(store, functools.partial(shadow_to_snapshot, shadow),
                                  checkpoint_every=checkpoint_every)
        hook.recovery = recovery
        log.info("WAL %s: epoch %d, %d record(s) replayed, %d channel(s), %d divergence event(s)",
                 wal_dir, recovery.epoch, recovery.record_count, len(shadow.channels), len(shadow.events))
        for note in recovery.notes:  # what the start changed in the directory: a tail cut, files set aside or removed
            log.warning("WAL %s: %s", wal_dir, note)
        for intent in stranded:
            if intent.kind != GET_POINT:
                log.warning("in doubt after restart: %s %d for peer %s dbid %d was sent to the signer, "
                            "its answer never recorded", intent.kind, intent.index, intent.peer_id.hex(), intent.dbid)
        if metrics is not None:
            hook.attach_metrics(metrics)
        return hook

    def attach_metrics(self, metrics) -> None:
        """Report to a ``proxy.addons.metrics.Metrics`` from now on (and what recovery found)."""
        self.metrics = metrics
        for kind in DIVERGENCE_KINDS:  # every kind is a series from the start, at 0
            metrics.divergences.labels(kind=kind)
        for kind in (RETRY_CHANGED, DOUBLE_SIGNED):
            metrics.divergences_in_doubt.labels(kind=kind)
        metrics.guard_refusals.labels(kind=DOUBLE_SIGNED)
        # From the recovered shadow: the crash of the node that took the last proxy with it.
        metrics.crashed_in_window_open.set(self.shadow.crashes_open())
        if self.recovery is not None:
            metrics.wal_recovered.inc(self.recovery.record_count)
            if self.recovery.problem:
                metrics.wal_cut_tails.inc()
        metrics.channels_tracked.set(len(self.shadow.channels))
        metrics.channels_diverged.set(len({(e.peer_id, e.dbid) for e in self.shadow.events}))

    def close(self) -> None:
        if self.wal is not None:
            self.wal.store.close()

    # --- hook methods ----------------------------------------------------------------------

    def _conn_key(self, conn: ConnContext) -> int:
        return (self._run_id << 32) | conn.conn_id

    async def on_request(self, ex: Exchange, point: str):
        if point != REQUEST_BEFORE or ex.duplicate:
            return None
        ctx = ex.conn
        if ex.request is None:
            return self._unreadable(ex)
        try:
            intent = intent_from_request(ex.request, ctx.peer_id, ctx.dbid, conn=self._conn_key(ctx),
                                         seq=ex.seq, time_ns=self._clock())
        except IntentError as exc:
            log.warning("not tracked: %s", exc)
            return None
        if intent is None:
            return None
        intent, predicted = self.shadow.begin(intent)
        self._ops[(ctx.conn_id, ex.seq)] = (intent.op_id, intent.kind)
        await self._append(intent_record(intent))
        self._by_request[_request_key(ex.request_raw)] = intent.op_id
        if len(self._by_request) > 4096:
            del self._by_request[next(iter(self._by_request))]
        self._report(predicted, counted=True)
        if self.guard and ctx.role != ROLE_MASTER and self.shadow.would_double_sign(predicted):
            del self._ops[(ctx.conn_id, ex.seq)]
            final = self._finish(intent.op_id, GUARD_REFUSED, "refused by --guard")
            await self._append(outcome_record(intent.op_id, GUARD_REFUSED, final[1], "refused by --guard"))
            self._report(final[0], counted=False)
            if self.metrics is not None:
                self.metrics.guard_refusals.labels(kind=DOUBLE_SIGNED).inc()
            return Refuse(
                f"hsmproxy --guard: refusing {ex.request.name} commit_num {intent.index}: the signer already "
                "signed different contents at this index (double signing)"
            )
        return None

    def _unreadable(self, ex: Exchange):
        """A request that did not decode. hsmd refuses a short one itself (its fields do not
        parse), but a long one's fields may run past the prefix the relay holds: hsmd may sign
        what the shadow cannot read, so --guard refuses it when it is a request the shadow tracks
        (fail closed). Only a node that pads its fields past 4 MiB sends one; lightningd never does."""
        name = TRACKED_REQUEST_TYPES.get(int.from_bytes(ex.request_raw[:2], "big"))
        if name is None or not ex.request_tail or ex.conn.role == ROLE_MASTER:
            return None
        length = len(ex.request_raw) + ex.request_tail
        if not self.guard:
            log.warning("not tracked: %s on %s is %d bytes long and does not decode from its first %d",
                        name, ex.conn.describe(), length, len(ex.request_raw))
            return None
        log.warning("--guard refuses %s on %s: %d bytes long, and its fields do not decode from its first %d "
                    "(the shadow cannot check it)", name, ex.conn.describe(), length, len(ex.request_raw))
        return FailClosed(f"hsmproxy --guard: refusing {name} of {length} bytes: its fields do not fit in the "
                          f"first {len(ex.request_raw)} bytes, so it cannot be checked")

    async def on_reply(self, ex: Exchange, point: str):
        if ex.duplicate:
            return None
        if point == REPLY_AFTER:
            self._reply_forwarded(ex)
            return None
        if point != REPLY_BEFORE:
            return None
        op = self._ops.pop((ex.conn.conn_id, ex.seq), None)
        if op is None:
            return None
        op_id, kind = op
        ok = ex.reply is not None and ex.reply.name == SUCCESS_REPLY[kind]
        if ok and kind == SIGN_REMOTE:
            self._signed_replies[(ex.conn.conn_id, ex.seq)] = op_id
        detail = "" if ok else f"the signer answered {ex.reply.name if ex.reply is not None else 'undecodable bytes'}"
        outcome = SIGNED if ok else REJECTED
        events, now = self._finish(op_id, outcome, detail)
        await self._append(outcome_record(op_id, outcome, now, detail))
        self._report(events, counted=False)
        if self.metrics is not None:
            self._channel_metrics(ex.conn)
        return None

    def _reply_forwarded(self, ex: Exchange) -> None:
        """A signature reached the node's socket: a crash from now on may find it saved."""
        op_id = self._signed_replies.pop((ex.conn.conn_id, ex.seq), None)
        if op_id is not None:
            self._forwarded[op_id] = None
            if len(self._forwarded) > FORWARDED_KEPT:
                del self._forwarded[next(iter(self._forwarded))]

    def _channel_metrics(self, conn: ConnContext) -> None:
        m = self.metrics
        m.channels_tracked.set(len(self.shadow.channels))
        if m.channel_detail_cap and conn.peer_id is not None:
            channel = self.shadow.channels.get((conn.peer_id, conn.dbid))
            if channel is not None and channel.next_counterparty_commit_num is not None:
                m.channel_detail(f"{conn.peer_id.hex()[:16]}/{conn.dbid}", channel.next_counterparty_commit_num)

    async def on_connection(self, conn: ConnContext, event: str) -> None:
        if event != CONN_CLOSED:
            return
        for key in [k for k in self._ops if k[0] == conn.conn_id]:
            op_id, _ = self._ops.pop(key)
            detail = "the connection closed before the signer answered"
            events, now = self._finish(op_id, UNANSWERED, detail)
            await self._append(outcome_record(op_id, UNANSWERED, now, detail))
            self._report(events, counted=False)
        for key in [k for k in self._signed_replies if k[0] == conn.conn_id]:
            del self._signed_replies[key]  # answered, never forwarded
        await self._node_side_ended(conn)

    async def _node_side_ended(self, conn: ConnContext) -> None:
        """The node's end of a channel's client connection, or of the master (the node itself),
        is gone: a channel it leaves inside the crash window gets a crashed_in_window event,
        recorded in the WAL like every input of the shadow. Nothing is written otherwise."""
        if conn.role == ROLE_MASTER:
            where: tuple = (None, None, None)
        elif conn.peer_id is not None and conn.dbid is not None:  # a channel's client connection
            where = (self._conn_key(conn), conn.peer_id, conn.dbid)
        else:
            return
        channels = self.shadow.windows_open(*where)
        if not channels:
            return
        forwarded = [ch.current_counterparty_op_id for ch in channels if ch.current_counterparty_op_id in self._forwarded]
        now = self._clock()
        events = self.shadow.connection_ended(now, forwarded, *where)
        await self._append(connection_end_record(now, forwarded, *where))
        self._report(events, counted=True)

    async def on_status(self, conn: ConnContext, raw: bytes, msg) -> None:
        if msg is None or msg.name != BAD_REQUEST:
            return
        op_id = self._by_request.pop(_request_key(msg.fields.get("msg", b"")), None)
        if op_id is None:
            return
        for key, (pending_op, _) in list(self._ops.items()):
            if pending_op == op_id:
                del self._ops[key]
        detail = f"hsmstatus_client_bad_request: {msg.fields.get('description', '')}"
        events, now = self._finish(op_id, REJECTED, detail)
        if events:
            await self._append(outcome_record(op_id, REJECTED, now, detail))
            self._report(events, counted=False)

    # --- helpers ---------------------------------------------------------------------------

    def _finish(self, op_id: int, outcome: str, detail: str) -> tuple[list[Divergence], int]:
        now = self._clock()
        return self.shadow.finish(op_id, outcome, now, detail), now

    async def _append(self, record: list) -> None:
        if self.wal is None:
            return
        wal = self.wal
        syncs, written, checkpoints = wal.syncs, wal.bytes_written, wal.checkpoints
        started = time.monotonic()
        await wal.append(record)
        if self.metrics is not None:
            m = self.metrics
            m.wal_appends.inc()
            if wal.syncs != syncs:  # this append led a group commit: time it
                m.wal_syncs.inc(wal.syncs - syncs)
                m.wal_sync_seconds.observe(time.monotonic() - started)
                m.wal_bytes.inc(wal.bytes_written - written)
            if wal.checkpoints != checkpoints:
                m.wal_checkpoints.inc(wal.checkpoints - checkpoints)

    def _report(self, events: list[Divergence], *, counted: bool) -> None:
        for ev in events:
            level = logging.INFO if ev.status in (REFUTED, PREVENTED, RESOLVED) else logging.WARNING
            log.log(level, "divergence %s (%s) peer %s dbid %d index %d: %s", ev.kind, ev.status,
                    ev.peer_id.hex(), ev.dbid, ev.index, ev.detail)
            if self.metrics is not None and (counted or ev.kind == SIGNER_REJECTED):
                # A comparison with a request in doubt is at most possible: it has a series of
                # its own, so that only what can be confirmed pages as double_signed.
                counter = self.metrics.divergences_in_doubt if ev.in_doubt else self.metrics.divergences
                counter.labels(kind=ev.kind).inc()
            for listener in self.listeners:
                listener(ev)
        if self.metrics is not None and events:
            self.metrics.channels_tracked.set(len(self.shadow.channels))
            self.metrics.channels_diverged.set(len({(e.peer_id, e.dbid) for e in self.shadow.events}))
            if any(ev.kind == CRASHED_IN_WINDOW for ev in events):
                self.metrics.crashed_in_window_open.set(self.shadow.crashes_open())

    # --- read-outs (control API, `hsmproxy state`) -----------------------------------------

    def state_jsonable(self) -> dict:
        return shadow_jsonable(self.shadow, wal_dir=self.wal.store.directory if self.wal else None)

    def divergences_jsonable(self) -> list:
        return divergences_jsonable(self.shadow)

