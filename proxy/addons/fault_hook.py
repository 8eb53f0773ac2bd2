"""The relay hook that carries out the engine's decisions.

The engine decides (sans-IO); this hook turns decisions into verdicts for the relay (drop,
duplicate, corrupt, hold, reject, disconnect) or does them itself inside its awaited method
(delay, kill-node, kill-signer, crash-proxy), so the relay needs no verdict for those.
"""

from __future__ import annotations

import logging
import os
import signal as _signal
from typing import Callable

import trio

from proxy.core.hooks import (
    CONN_CLOSED,
    CONN_OPENED,
    ConnContext,
    Disconnect,
    Drop,
    Duplicate,
    Exchange,
    Hold,
    Refuse,
    Replace,
)

from faults.engine import Decision, Observation
from proxy.addons.fault_runtime import FaultRuntime

log = logging.getLogger("hsmproxy.faults")

CRASH_EXIT_CODE = 70  # EX_SOFTWARE: "the proxy crashed on purpose"

PidSource = Callable[[], "int | None"]


class FaultHook:
    def __init__(
        self,
        runtime: FaultRuntime,
        node_pid: PidSource = lambda: None,
        signer_pid: PidSource = lambda: None,
        exit_now: Callable[[int], None] = os._exit,
    ):
        self.runtime = runtime
        self.node_pid = node_pid
        self.signer_pid = signer_pid
        self._exit_now = exit_now
        self._keys: dict[int, str] = {}

    # --- hook methods ------------------------------------------------------------------------
    async def on_connection(self, conn: ConnContext, event: str) -> None:
        if event == CONN_OPENED:
            self._key(conn)
        elif event == CONN_CLOSED:
            self._keys.pop(conn.conn_id, None)

    async def on_request(self, ex: Exchange, point: str):
        return await self._act(ex, point, ex.request_raw, reply=None)

    async def on_reply(self, ex: Exchange, point: str):
        return await self._act(ex, point, ex.reply_raw or b"", reply=ex.reply)

    async def on_signer_exit(self, status: int) -> None:
        # What reproduces this run, next to what it did: compare hashes across runs of one seed.
        engine = self.runtime.engine
        log.warning("fault trace: seed %d, %d fault(s), hash %s", engine.seed, engine.event_count, engine.trace_hash)

    # --- decisions into deeds ----------------------------------------------------------------
    def _key(self, conn: ConnContext) -> str:
        key = self._keys.get(conn.conn_id)
        if key is None:
            key = self.runtime.engine.connection_key(conn.role, conn.dbid, conn.peer_id)
            self._keys[conn.conn_id] = key
        return key

    async def _act(self, ex: Exchange, point: str, raw: bytes, reply):
        engine = self.runtime.engine
        if not engine.active:
            return None  # the common case: nothing to do
        conn = ex.conn
        obs = Observation(point, self._key(conn), conn.role, ex.seq, ex.request, reply, raw, conn.dbid, conn.peer_id)
        verdict = None
        for decision in engine.decide(obs):
            log.warning("fault injected: %s", _describe(decision))
            self.runtime.injected(decision.event)
            outcome = await self._carry_out(decision, point)
            if outcome is not None and verdict is None:
                verdict = outcome
        return verdict

    async def _carry_out(self, decision: Decision, point: str):
        rule = decision.rule
        action = rule.action
        if action == "delay":
            await trio.sleep(decision.delay_ms / 1000)
        elif action == "kill-node":
            self._signal("node", self.node_pid(), rule.signal)
        elif action == "kill-signer":
            self._signal("signer", self.signer_pid(), rule.signal)
        elif action == "crash-proxy":
            log.critical("crash-proxy: exiting now with status %d, without cleanup (rule %s)", CRASH_EXIT_CODE, rule.name)
            logging.shutdown()
            self._exit_now(CRASH_EXIT_CODE)
        elif action == "drop":
            return Drop()
        elif action == "duplicate":
            return Duplicate()
        elif action == "corrupt":
            return Replace(decision.replacement)
        elif action == "reject":
            return Refuse(rule.description)
        elif action == "disconnect":
            return Disconnect()
        elif action == "hold":
            held = self.runtime.hold(decision.event)
            log.warning("fault: message held as #%d until released (hsmproxy faults release %d)", held.id, held.id)
            return Hold(held.release)
        return None

    def _signal(self, who: str, pid: int | None, signum: int) -> None:
        if pid is None or pid <= 1:
            log.error("kill-%s: no %s process is known to this proxy; nothing signalled", who, who)
            return
        try:
            os.kill(pid, signum)
            log.warning("kill-%s: sent %s to pid %d", who, _signal.Signals(signum).name, pid)
        except ProcessLookupError:
            log.error("kill-%s: pid %d is gone already", who, pid)
        except PermissionError:
            log.error("kill-%s: not allowed to signal pid %d", who, pid)


def _describe(decision: Decision) -> str:
    e = decision.event
    detail = f" {e.detail}" if e.detail else ""
    return f"{e.action}{detail} on {e.message} ({e.conn_key} seq {e.seq}) at {e.point} by rule {e.rule}"
