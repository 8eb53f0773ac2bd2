"""Crash points of a sweep against real Core Lightning: (hsmd request, point, node), the one-line
fault rule that crashes lightningd there, and the ``MESSAGE@POINT:NODE`` syntax that names them.

Sans-IO: nothing here starts a process or reads a file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import wire
from faults.plan import POINT_ALIASES, POINTS, is_reply_name

NODES = ("l1", "l2")  # Core Lightning's test names; l1 opens (funds) the channel
NODE_ALIASES = {"1": "l1", "2": "l2", "lightningd-1": "l1", "lightningd-2": "l2"}


class CrashPointError(ValueError):
    """A crash point that cannot be used; the message names it and says what to write."""


@dataclass(frozen=True, order=True)
class CrashPoint:
    """Kill ``node``'s lightningd at ``point`` of the next ``message`` its channeld sends to hsmd."""

    node: str
    message: str
    point: str

    @property
    def spec(self) -> str:
        """The form ``--cycle`` takes, and the report prints."""
        return f"{self.message}@{self.point}:{self.node}"

    def fault_line(self, dbid: int, name: str) -> str:
        """The one-line fault rule (docs/faults.md) that the node's proxy gets through its control
        API: kill-node (SIGKILL of lightningd, the wrapper's parent) at this point of the next
        such request on the channel's connection. It fires once, then the proxy drops it."""
        return f"!{self.message}@{self.point} role=client dbid={dbid} name={name}"


def request_name(text: str) -> str:
    """A request's CSV name from ``hsmd_sign_remote_commitment_tx`` or ``sign_remote_commitment_tx``."""
    candidates = [text] if text.startswith("hsmd_") else [f"hsmd_{text}", text]
    for name in candidates:
        if name in wire.SPECS_BY_NAME:
            if is_reply_name(name) or name.startswith(("status_", "hsmstatus_")):
                raise CrashPointError(f"{text!r} is not a request hsmd receives; name the request "
                                      f"(e.g. hsmd_sign_remote_commitment_tx, whose reply is hsmd_sign_tx_reply)")
            return name
    requests = [n for n in wire.SPECS_BY_NAME if n.startswith("hsmd_") and not is_reply_name(n)]
    close = difflib.get_close_matches(candidates[0], requests, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise CrashPointError(f"no hsmd request is called {text!r}{hint}")


def point_name(text: str) -> str:
    if text in POINTS:
        return text
    if text in POINT_ALIASES:
        return POINT_ALIASES[text]
    raise CrashPointError(f"unknown point {text!r}: one of {', '.join(POINTS)} "
                          f"(or {', '.join(sorted(POINT_ALIASES))})")


def node_name(text: str) -> str:
    if text in NODES:
        return text
    if text in NODE_ALIASES:
        return NODE_ALIASES[text]
    raise CrashPointError(f"unknown node {text!r}: l1 (the node that funded the channel) or l2")


@dataclass(frozen=True)
class Selector:
    """One ``--cycle MESSAGE[@POINT][:NODE]``: a part left out (or ``*``) means every value."""

    message: str | None
    point: str | None
    node: str | None

    def matches(self, cp: CrashPoint) -> bool:
        return ((self.message is None or self.message == cp.message)
                and (self.point is None or self.point == cp.point)
                and (self.node is None or self.node == cp.node))

    @property
    def exact(self) -> CrashPoint | None:
        if self.message is None or self.point is None or self.node is None:
            return None
        return CrashPoint(self.node, self.message, self.point)


def parse_selector(text: str) -> Selector:
    """``hsmd_sign_remote_commitment_tx@reply.before_forward:l1``; ``sign_remote_commitment_tx@reply``
    (both nodes), ``*@*:l2`` (every crash point of l2). Point aliases (req, sent, reply, replied)
    and message names without ``hsmd_`` are accepted."""
    rest, _, node = text.strip().partition(":")
    message, _, point = rest.partition("@")
    if not message:
        raise CrashPointError(f"--cycle {text!r}: give MESSAGE[@POINT][:NODE], "
                              "e.g. hsmd_sign_remote_commitment_tx@reply.before_forward:l1")
    try:
        return Selector(
            message=None if message == "*" else request_name(message),
            point=None if point in ("", "*") else point_name(point),
            node=None if node in ("", "*") else node_name(node),
        )
    except CrashPointError as exc:
        raise CrashPointError(f"--cycle {text!r}: {exc}") from None


def sweep_points(requests: dict[str, list[str]]) -> list[CrashPoint]:
    """Every crash point of the dance: for each node, each request its channeld made (in the
    order first seen), at each of the four points."""
    return [CrashPoint(node, message, point)
            for node in NODES for message in requests.get(node, []) for point in POINTS]


def select_points(requests: dict[str, list[str]], selectors: list[Selector]) -> list[CrashPoint]:
    """The crash points a session runs: the whole sweep, or those the ``--cycle`` selectors name.
    An exact selector runs even when the warm-up did not see its request (it will say so:
    ``not_reached``), so any cycle of any report can be replayed."""
    every = sweep_points(requests)
    if not selectors:
        return every
    chosen: list[CrashPoint] = []
    for selector in selectors:
        found = [cp for cp in every if selector.matches(cp)]
        if not found and selector.exact is not None:
            found = [selector.exact]
        for cp in found:
            if cp not in chosen:
                chosen.append(cp)
    return chosen
