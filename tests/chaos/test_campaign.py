"""A 50-seed chaos campaign with real processes: every invariant holds, and a seed replays exactly."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.chaos.helpers import chaos

SEEDS = "1..50"


@pytest.mark.timeout(900)  # about a minute on an idle 2-core machine; the margin is for a busy one
async def test_fifty_seed_campaign_keeps_every_invariant_and_replays(tmp_path):
    report = tmp_path / "campaign.json"
    code, out, err = await chaos("--seeds", SEEDS, "--jobs", "2", "--json", str(report), "--junit",
                                 str(tmp_path / "campaign.xml"), timeout=840)
    runs = json.loads(report.read_text())["runs"]
    failed = [(r["seed"], r["invariant_violations"], r["reproduce"]) for r in runs if not r["ok"]]
    assert code == 0 and failed == [], (failed, err[-3000:])
    assert [r["seed"] for r in runs] == list(range(1, 51))
    assert {r["outcome"] for r in runs} == {"converged"}  # the WAL node never gets stuck, never diverges
    # The only events: crashes inside the window, each resolved when the WAL node came back with
    # the same commitment (or the peer's revocation arrived).
    assert {(d["kind"], d["status"]) for r in runs for d in r["divergences"]} <= {("crashed_in_window", "resolved")}
    actions = {f["action"] for r in runs for f in r["faults"]}
    assert {"kill-node", "kill-signer", "crash-proxy"} <= actions
    assert sum(r["restarts"] for r in runs) >= 50
    window = [r["seed"] for r in runs for f in r["faults"] if f["action"] == "kill-node"
              and f["point"] == "reply.before_forward" and f["message"] == "hsmd_sign_tx_reply"]
    assert len(window) >= 8  # the split-brain window was hit, and each time the WAL node converged
    hit = {r["seed"]: r for r in runs if r["seed"] in window}
    assert all(any(d["kind"] == "crashed_in_window" for d in r["divergences"]) for r in hit.values())

    # Re-running a seed reproduces its fault trace and outcome: replay the two with the most faults.
    busiest = sorted(runs, key=lambda r: (-len(r["faults"]), r["seed"]))[:2]
    for run in busiest:
        replay_report = tmp_path / f"replay-{run['seed']}.json"
        args = shlex.split(run["reproduce"])[2:]  # drop "hsmproxy chaos"
        code, out, err = await chaos(*args, "--json", str(replay_report), timeout=120)
        (again,) = json.loads(replay_report.read_text())["runs"]
        assert code == 0, err
        assert (again["seed"], again["outcome"], again["fault_trace_hash"]) == (run["seed"], run["outcome"],
                                                                               run["fault_trace_hash"])
        assert [(f["rule"], f["incarnation"], f["seq"]) for f in again["faults"]] == [
            (f["rule"], f["incarnation"], f["seq"]) for f in run["faults"]]
