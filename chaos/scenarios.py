"""The write-up's three stories as scenario definitions, and what each is expected to show.

A scenario is data: which node discipline, whether the node plays the attacker, the signer's
retry-same policy, and the fault that opens the crash window. The window is hit exactly, never
by timing: ``kill-node`` at ``reply.before_forward`` of the Nth ``hsmd_sign_remote_commitment_tx``
means the signer has signed and persisted, and the node never saw the signature. The proxy
flags that crash at once (``crashed_in_window``, possible); the node's next request at N
confirms it (other contents: the node lost N) or resolves it (the same contents).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from sim.node import NAIVE, WAL
from sim.policy import RETRY_SAME

ENFORCE, WARN = "enforce", "warn"

# Outcomes of a run (the names are part of the JSON report).
CONVERGED = "converged"
STUCK = "stuck"
FUNDS_LOST = "funds_lost"
REFUSED = "refused"
INVARIANT_VIOLATED = "invariant_violated"
OUTCOMES = (CONVERGED, STUCK, FUNDS_LOST, REFUSED, INVARIANT_VIOLATED)

# The commitment number whose signature the node loses (commitment 0 is signed at channel open).
CRASH_COMMIT_NUM = 1
CRASH_WINDOW = f"!hsmd_sign_remote_commitment_tx@reply name=crash-window commit_num=={CRASH_COMMIT_NUM}"


@dataclass(frozen=True)
class Expectation:
    """What a run of the scenario must show. Kinds and tags must be present; others may be too."""

    outcome: str
    divergence_kinds: tuple[str, ...] = ()  # flagged and not refuted, prevented or resolved
    signer_rejections: tuple[str, ...] = ()
    funds_lost: bool = False
    absent_divergences: bool = False  # True: no divergence may be reported, except resolved ones
    resolved_kinds: tuple[str, ...] = ()  # flagged, then resolved (a crash the node recovered from)


@dataclass(frozen=True)
class Scenario:
    name: str
    story: str
    discipline: str  # how the node saves channel state: NAIVE (sign, then save) or WAL (intent first)
    attacker: bool  # a compromised node and an attacker peer play the exploit
    faults: tuple[str, ...]  # one-line fault rules for the proxy
    expected_validating: Expectation  # with our validating signer
    expected_stock: Expectation | None = None  # with a non-validating signer (stock hsmd via --signer)
    signer_policy: str = ENFORCE
    htlcs_msat: tuple[int, int] = (5_000_000, 7_000_000)  # H1, H2
    notes: dict = field(default_factory=dict)

    def expectation(self, validating: bool, signer_policy: str | None = None) -> Expectation:
        policy = signer_policy or self.signer_policy
        if not validating:
            return self.expected_stock or self.expected_validating
        if self.name == "pretend-crash" and policy == WARN:
            return PRETEND_CRASH_WARN
        return self.expected_validating


PRETEND_CRASH_WARN = Expectation(FUNDS_LOST, divergence_kinds=("double_signed",), funds_lost=True)

HONEST_CRASH = Scenario(
    name="honest-crash",
    story="The node (sign, then save) is killed after the signer signed commitment N and before it saved "
    "(the proxy flags the crash in the window at once); after the restart the peer re-sends H1 and adds H2, "
    "and the node asks to sign N again with (H1, H2), which confirms it.",
    discipline=NAIVE,
    attacker=False,
    faults=(CRASH_WINDOW,),
    expected_validating=Expectation(
        STUCK, divergence_kinds=("crashed_in_window", "retry_changed"), signer_rejections=(RETRY_SAME,)),
    expected_stock=Expectation(CONVERGED, divergence_kinds=("crashed_in_window", "double_signed")),
)

PRETEND_CRASH = Scenario(
    name="pretend-crash",
    story="A compromised node leaks the signature of N(H1) to an attacker peer, pretends to crash, and asks "
    "to sign N(H1, H2); the attacker later publishes N(H1) and H2 is lost.",
    discipline=NAIVE,
    attacker=True,
    faults=(),  # the node pretends: nothing is killed
    expected_validating=Expectation(REFUSED, divergence_kinds=("retry_changed",), signer_rejections=(RETRY_SAME,)),
    expected_stock=PRETEND_CRASH_WARN,
)

WAL_FIX = Scenario(
    name="wal-fix",
    story="The same crash with the node's write-ahead discipline: the proxy flags the crash in the window, "
    "the node re-signs the same N from its intent record (which resolves the flag), the signer accepts the "
    "identical retry, and the channel converges.",
    discipline=WAL,
    attacker=False,
    faults=(CRASH_WINDOW,),
    expected_validating=Expectation(CONVERGED, absent_divergences=True, resolved_kinds=("crashed_in_window",)),
)

BUILTIN = {s.name: s for s in (HONEST_CRASH, PRETEND_CRASH, WAL_FIX)}
CAMPAIGN = "campaign"


def scenario_named(name: str) -> Scenario:
    try:
        return BUILTIN[name]
    except KeyError:
        close = difflib.get_close_matches(name, BUILTIN, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown scenario {name!r}{hint}; scenarios: {', '.join(BUILTIN)}") from None
