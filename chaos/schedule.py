"""Randomized fault schedules for campaigns: a seed in, one-line fault rules out.

Pure: every choice is a hash of (seed, fault number, what is chosen), as the fault engine draws,
so a seed names the same schedule on every machine and Python version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from faults.plan import PREFIXES

# The commitment dance, as channeld drives it (reference hsmd-protocol.md, "order of calls").
DANCE = (
    "hsmd_get_per_commitment_point",
    "hsmd_sign_remote_commitment_tx",
    "hsmd_validate_commitment_tx",
    "hsmd_revoke_commitment_tx",
    "hsmd_validate_revocation",
)
# The one-line plan's short point names (faults.plan.POINT_ALIASES), in the order seeds pick them.
POINTS = ("req", "sent", "reply", "replied")
BEFORE_POINTS = ("req", "reply")

# action -> (weight, points it may fire at)
ACTIONS = {
    "kill-node": (5, POINTS),
    "kill-signer": (3, POINTS),
    "crash-proxy": (3, POINTS),
    "delay": (3, POINTS),
    "drop": (1, BEFORE_POINTS),
    "duplicate": (1, ("req",)),
}
# The one-line plan's prefix of each action (each campaign action has exactly one).
PREFIX_OF = {action: prefix for prefix, (action, _) in PREFIXES.items() if action in ACTIONS}
CRASHES = frozenset({"kill-node", "kill-signer", "crash-proxy"})
# The write-up's window: the signer signed counterparty commitment N, the node never saw it.
WINDOW_SHARE = 1 / 3  # of seeds whose first fault is exactly that crash (drawn uniformly it would be ~1.5%)


def draw(seed: int, *parts) -> float:
    text = "|".join(["chaos", str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2**64


def _pick(seed: int, parts: tuple, choices):
    return choices[int(draw(seed, *parts) * len(choices))]


def _weighted(seed: int, parts: tuple, weights: dict[str, int]) -> str:
    total = sum(weights.values())
    x = draw(seed, *parts) * total
    for name, weight in weights.items():
        x -= weight
        if x < 0:
            return name
    return name  # float edge: the last one


@dataclass(frozen=True)
class ScheduledFault:
    name: str
    action: str
    message: str
    nth: int
    point: str
    options: str = ""

    def line(self) -> str:
        prefix = PREFIX_OF[self.action]
        nth = f"*{self.nth}" if self.nth > 1 else ""
        opts = f" {self.options}" if self.options else ""
        return f"{prefix}{self.message}{nth}@{self.point} name={self.name}{opts}"

    @property
    def crashes(self) -> bool:
        return self.action in CRASHES


def schedule_for(seed: int, max_faults: int = 3, max_nth: int = 3) -> tuple[ScheduledFault, ...]:
    """1..max_faults faults for this seed; the first is a crash (kill node, signer or proxy), so
    every campaign run exercises a restart, and for a third of the seeds it is the split-brain
    window itself (kill-node when the signer's signature of commitment N is on its way)."""
    count = 1 + int(draw(seed, "count") * max_faults)
    weights = {action: weight for action, (weight, _) in ACTIONS.items()}
    faults = []
    for i in range(count):
        action = _weighted(seed, (i, "action"), weights)
        if i == 0 and action not in CRASHES:
            action = _weighted(seed, (i, "crash"), {a: weights[a] for a in sorted(CRASHES)})
        message = _pick(seed, (i, "message"), DANCE)
        point = _pick(seed, (i, "point"), ACTIONS[action][1])
        nth = 1 + int(draw(seed, i, "nth") * max_nth)
        if i == 0 and draw(seed, "window") < WINDOW_SHARE:
            # the 1st signing request is commitment 0 at the channel's opening (nothing to lose
            # yet); the 2nd and 3rd are commitments 1 and 2, which carry the peer's updates
            action, message, point = "kill-node", "hsmd_sign_remote_commitment_tx", "reply"
            nth = 2 + int(draw(seed, i, "window-nth") * 2)
        options = ""
        if action == "delay":
            options = f"ms={1 + int(draw(seed, i, 'ms') * 30)}"
        faults.append(ScheduledFault(f"f{i + 1}", action, message, nth, point, options))
    return tuple(faults)


def plan_line(faults) -> str:
    return "; ".join(f.line() for f in faults)
