"""The live fault state shared by the relay hook and the control API: engine, held messages, policy.

Everything here is in memory and non-blocking, so control operations finish at once even while
messages are held or the relay is busy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from faults.engine import FaultEngine, FaultEvent
from faults.plan import PlanError, Rule


class FaultsNotEnabled(PlanError):
    """Fault rules were given to a proxy that was not started with --enable-faults."""


REFUSAL = "fault rules are refused: this proxy was not started with --enable-faults (or enable-faults = true in its --config file)"


@dataclass
class HeldMessage:
    id: int
    event: FaultEvent
    release: trio.Event = field(default_factory=trio.Event)

    def to_json(self) -> dict:
        return {"id": self.id, **self.event.to_json()}


class FaultRuntime:
    def __init__(self, engine: FaultEngine | None = None, allowed: bool = False):
        self.engine = engine or FaultEngine()
        self.allowed = allowed  # --enable-faults: without it no rule may be installed
        self.held: dict[int, HeldMessage] = {}
        self._next_hold = 1
        self.listeners: list = []  # callables(FaultEvent) told of every injected fault (metrics)
        if self.engine.rules and not allowed:
            raise FaultsNotEnabled(REFUSAL)

    def add_rule(self, rule: Rule) -> Rule:
        if not self.allowed:
            raise FaultsNotEnabled(REFUSAL)
        return self.engine.add_rule(rule)

    def injected(self, event: FaultEvent) -> None:
        for listener in self.listeners:
            listener(event)

    def attach_metrics(self, metrics) -> None:
        """Feed proxy.addons.metrics.Metrics: faults injected by action and point, enabled, held."""
        metrics.faults_enabled.set(1 if self.allowed else 0)
        metrics.held_messages.set_function(lambda: len(self.held))
        for rule in self.engine.rules:  # planned faults are series (at 0) before they fire
            metrics.faults.labels(action=rule.action, point=rule.point)
        self.listeners.append(lambda event: metrics.faults.labels(action=event.action, point=event.point).inc())

    def hold(self, event: FaultEvent) -> HeldMessage:
        held = HeldMessage(self._next_hold, event)
        self._next_hold += 1
        self.held[held.id] = held
        return held

    def release(self, hold_id: int | None = None) -> list[int]:
        """Release one held message, or all of them when ``hold_id`` is None."""
        if hold_id is None:
            ids = sorted(self.held)
        elif hold_id in self.held:
            ids = [hold_id]
        else:
            raise KeyError(f"no held message {hold_id}; held: {', '.join(map(str, sorted(self.held))) or '(none)'}")
        for i in ids:
            self.held.pop(i).release.set()
        return ids

    def health(self) -> dict:
        return {
            "faults_enabled": self.allowed,
            "faults_active": self.engine.enabled and bool(self.engine.rules),
            "held": len(self.held),
            **{k: v for k, v in self.engine.status().items() if k != "enabled"},
            "rules_enabled": self.engine.enabled,
        }
