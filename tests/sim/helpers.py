"""Helpers for the sim tests: run the real ``hsmproxy sim-node`` process, read back the three
actors' durable states and check they agree."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from tests.paths import ROOT

ROOT = ROOT
NODE_TIMEOUT = 120


def sim_node(datadir: Path, *args: str, env_extra: dict | None = None, timeout: float = NODE_TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("HSMPROXY_SIM_CRASH_AT", None)
    env.pop("HSMPROXY_SIM_SIGNER_CRASH_AT", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "hsmproxy.cli", "sim-node", "--data-dir", str(datadir), "--json", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def summary(proc: subprocess.CompletedProcess) -> dict:
    assert proc.stdout.strip(), f"no summary; stderr: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def signer_state(datadir: Path) -> dict:
    (path,) = (datadir / "sim-signer-state").glob("*.json")
    return json.loads(path.read_text())["enforcement_state"]


def peer_value(datadir: Path, key: str):
    db = sqlite3.connect(datadir / "peer.sqlite")
    try:
        row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])
    finally:
        db.close()


def node_channel(datadir: Path) -> dict:
    db = sqlite3.connect(datadir / "node.sqlite")
    try:
        nr, nl, nrr = db.execute("SELECT next_remote, next_local, next_remote_revoke FROM channel").fetchone()
        states = {(side, num): json.loads(state) for side, num, state in db.execute("SELECT side, num, state FROM commitments")}
        updates = [u for (upd,) in db.execute("SELECT updates FROM commitments WHERE side = 'remote'") for u in json.loads(upd)]
        return {"next_remote": nr, "next_local": nl, "next_remote_revoke": nrr, "states": states, "updates": updates}
    finally:
        db.close()


def assert_all_agree(datadir: Path, n: int) -> None:
    """Node, peer and signer all hold exactly n completed updates, with the same channel state,
    and every update the peer ever sent is committed or still pending (nothing lost)."""
    node = node_channel(datadir)
    assert (node["next_remote"], node["next_local"], node["next_remote_revoke"]) == (n + 1, n + 1, n)
    assert peer_value(datadir, "last_cs_received") == n
    assert peer_value(datadir, "node_revoked") == n - 1
    assert peer_value(datadir, f"state/{n}") == node["states"][("remote", n)] == node["states"][("local", n)]
    signer = signer_state(datadir)
    assert (signer["next_counterparty_commit_num"], signer["next_counterparty_revoke_num"], signer["next_holder_commit_num"]) == (n + 1, n, n + 1)
    info = signer["current_counterparty_commit_info"]
    state = node["states"][("remote", n)]
    assert sorted(h[0] for h in info["offered_htlcs"] + info["received_htlcs"]) == sorted(
        h["amount_msat"] // 1000 for h in state["htlcs"])
    committed = {u["uid"] for u in node["updates"]}
    pending = {u["uid"] for u in peer_value(datadir, "pending") or []}
    assert pending.isdisjoint(committed)
