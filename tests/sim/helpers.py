"""Helpers for the sim tests: run the real ``hsmproxy sim-node`` process, read back the three
actors' durable states and check they agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sim.node import DBID
from sim.node_cmd import read_summary
from sim.node_db import NodeDB
from sim.peer import PEER_DB
from sim.signer_store import read_channels
from sim.sqlite_kv import JsonKV
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
    found = read_summary(proc.stdout)
    assert found is not None, f"no summary; stderr: {proc.stderr[-2000:]}"
    return found


def signer_state(datadir: Path) -> dict:
    (record,) = read_channels(datadir)
    return record.policy_state.to_json()


def peer_value(datadir: Path, key: str):
    kv = JsonKV(datadir / PEER_DB)
    try:
        return kv.get(key)
    finally:
        kv.close()


def node_channel(datadir: Path) -> dict:
    db = NodeDB(datadir)
    try:
        channel = db.channel(DBID)
        commitments = db.commitments(DBID)
    finally:
        db.close()
    return {"next_remote": channel["next_remote"], "next_local": channel["next_local"],
            "next_remote_revoke": channel["next_remote_revoke"],
            "states": {key: state.to_json() for key, (_, state) in commitments.items()},
            "updates": [u.to_json() for (side, _), (updates, _) in commitments.items() if side == "remote" for u in updates]}


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
