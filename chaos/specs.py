"""From what the user asked (scenario or campaign seed, signer, policy) to a ``RunSpec``, and
the one command that replays it."""

from __future__ import annotations

from chaos.result import reproduce_command
from chaos.runner import RunSpec
from chaos.scenarios import CAMPAIGN, CRASH_COMMIT_NUM, ENFORCE, Scenario
from chaos.schedule import schedule_for
from sim.node import WAL

STORY_SEED = 1  # the built-in stories' default node/peer seed
STORY_UPDATES = 2  # commitment 1 is the crash window; 2 shows the channel going on (or not)
CAMPAIGN_UPDATES = 3


def _signer_args(signer: str | None, signer_validates: bool, policy: str, policy_explicit: bool) -> list[str]:
    args = []
    if signer is not None:
        args += ["--signer", signer]
        if signer_validates:
            args += ["--signer-validates"]
    if policy_explicit or policy != ENFORCE:
        args += ["--signer-policy", policy]
    return args


def scenario_spec(scenario: Scenario, seed: int = STORY_SEED, signer: str | None = None, signer_validates: bool | None = None,
                  policy: str | None = None, updates: int = STORY_UPDATES, timeout: float = 30.0) -> RunSpec:
    validates = (signer is None) if signer_validates is None else signer_validates
    policy_value = policy or scenario.signer_policy
    argv = ["--scenario", scenario.name, "--seeds", f"{seed}..{seed}",
            *_signer_args(signer, validates and signer is not None, policy_value, policy is not None)]
    return RunSpec(
        scenario=scenario.name, seed=seed, discipline=scenario.discipline, attacker=scenario.attacker,
        faults=scenario.faults, updates=updates, reproduce=reproduce_command(argv),
        expectation=scenario.expectation(validates, policy_value), signer=signer, signer_validates=validates,
        signer_policy=policy_value, pretend_crash_at=CRASH_COMMIT_NUM if scenario.attacker else None,
        incarnation_timeout=timeout,
    )


def campaign_spec(seed: int, discipline: str = WAL, signer: str | None = None, signer_validates: bool | None = None,
                  policy: str = ENFORCE, updates: int = CAMPAIGN_UPDATES, timeout: float = 30.0) -> RunSpec:
    validates = (signer is None) if signer_validates is None else signer_validates
    faults = tuple(f.line() for f in schedule_for(seed))
    argv = ["--seeds", f"{seed}..{seed}"]
    if discipline != WAL:
        argv += ["--discipline", discipline]
    argv += _signer_args(signer, validates and signer is not None, policy, False)
    return RunSpec(
        scenario=CAMPAIGN, seed=seed, discipline=discipline, attacker=False, faults=faults, updates=updates,
        reproduce=reproduce_command(argv), expectation=None, signer=signer, signer_validates=validates,
        signer_policy=policy, incarnation_timeout=timeout,
    )
