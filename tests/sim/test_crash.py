"""kill -9 of the node or of the signer at any point of the dance, then a restart: with the
``wal`` discipline nothing is lost and node, peer and signer agree; with ``naive`` the one
window between signing and persisting reproduces the split-brain (the signer refuses with
policy-commitment-retry-same) exactly as the write-up describes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.node import CRASH_POINTS, EXIT_OK, EXIT_REFUSED, EXIT_SIGNER, WAL
from tests.sim.helpers import ROOT, assert_all_agree, sim_node, summary

pytestmark = pytest.mark.timeout(240)
FAST = "--signer-arg=--no-fsync"  # a SIGKILL does not lose the page cache; only power cuts need fsync


@pytest.mark.slow
def test_wal_node_killed_at_every_point_loses_nothing(tmp_path):
    """One channel, killed once at each crash point (at successive commitments), restarted each time."""
    target = len(CRASH_POINTS) + 2
    for k, point in enumerate(CRASH_POINTS, start=1):
        crashed = sim_node(tmp_path, "--updates", str(target), "--discipline", WAL, "--crash-at", f"{point}:{k}", FAST)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        assert f"crash-at {point}:{k}" in crashed.stderr
    resumed = sim_node(tmp_path, "--updates", str(target), "--discipline", WAL, FAST)
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert summary(resumed)["updates_completed"] == target
    assert_all_agree(tmp_path, target)


@pytest.mark.parametrize("point,expected", [
    ("before_sign_remote", EXIT_OK),
    ("after_sign_remote_before_persist", EXIT_REFUSED),  # the split-brain window
    ("after_persist_before_send_commitsig", EXIT_OK),  # retransmission re-signs the identical commitment
])
def test_naive_node_killed_is_refused_only_in_the_split_brain_window(tmp_path, point, expected):
    crashed = sim_node(tmp_path, "--updates", "3", "--crash-at", f"{point}:2", FAST)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = sim_node(tmp_path, "--updates", "3", FAST)
    assert resumed.returncode == expected, resumed.stderr
    if expected == EXIT_REFUSED:
        assert "policy-commitment-retry-same" in resumed.stderr and "changed info" in resumed.stderr
        assert summary(resumed)["updates_completed"] == 1  # stuck before commitment 2
    else:
        assert_all_agree(tmp_path, 3)


def test_naive_honest_crash_without_new_updates_recovers(tmp_path):
    """The split-brain needs the peer to change the update set after the reconnect."""
    args = ("--updates", "3", "--no-peer-adds-on-reconnect", FAST)
    crashed = sim_node(tmp_path, *args, "--crash-at", "after_sign_remote_before_persist:2")
    assert crashed.returncode == -signal.SIGKILL
    assert sim_node(tmp_path, *args).returncode == EXIT_OK
    assert_all_agree(tmp_path, 3)


SIGNER_WINDOWS = ["hsmd_sign_remote_commitment_tx:3", "hsmd_sign_remote_htlc_tx:2", "hsmd_validate_commitment_tx:3",
                  "hsmd_revoke_commitment_tx:2", "hsmd_validate_revocation:2"]


def test_wal_signer_killed_between_persist_and_reply_loses_nothing(tmp_path):
    """VLS's own window, for every state-changing request: the signer persisted, then died before replying."""
    target = 8
    for window in SIGNER_WINDOWS:
        crashed = sim_node(tmp_path, "--updates", str(target), "--discipline", WAL, FAST,
                           env_extra={"HSMPROXY_SIM_SIGNER_CRASH_AT": window})
        assert crashed.returncode == EXIT_SIGNER, crashed.stderr  # lightningd dies with its hsmd
        assert "signer exit status -9" in crashed.stderr
    resumed = sim_node(tmp_path, "--updates", str(target), "--discipline", WAL, FAST)
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert_all_agree(tmp_path, target)


def test_a_signer_dying_while_it_hands_out_a_client_fd_is_a_signer_exit_not_a_traceback(tmp_path):
    """The node's start-up requests get the same treatment as the dance's: exit EXIT_SIGNER."""
    crashed = sim_node(tmp_path, "--updates", "1", FAST, env_extra={"HSMPROXY_SIM_SIGNER_CRASH_AT": "hsmd_client_hsmfd:1"})
    assert crashed.returncode == EXIT_SIGNER, crashed.stderr
    assert "hsmd_client_hsmfd" in crashed.stderr and "Traceback" not in crashed.stderr


def test_naive_signer_killed_after_signing_is_the_split_brain(tmp_path):
    crashed = sim_node(tmp_path, "--updates", "3", FAST, env_extra={"HSMPROXY_SIM_SIGNER_CRASH_AT": SIGNER_WINDOWS[0]})
    assert crashed.returncode == EXIT_SIGNER, crashed.stderr
    resumed = sim_node(tmp_path, "--updates", "3", FAST)
    assert resumed.returncode == EXIT_REFUSED and "policy-commitment-retry-same" in resumed.stderr


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_wal_survives_random_kills_of_node_and_signer(tmp_path):
    rng = random.Random(20261123)
    target = 12
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSMPROXY_SIM_")}
    argv = [sys.executable, "-m", "hsmproxy.cli", "sim-node", "--data-dir", str(tmp_path), "--updates", str(target),
            "--discipline", WAL, "--json", FAST]
    for attempt in range(4):
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(rng.uniform(0.8, 2.0))  # past start-up, somewhere inside the dance
            victims = _children(proc.pid) if attempt % 2 else []
            os.kill(victims[0] if victims else proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    final = sim_node(tmp_path, "--updates", str(target), "--discipline", WAL, FAST)
    assert final.returncode == EXIT_OK, final.stderr
    assert_all_agree(tmp_path, target)


def test_naive_split_brain_carries_on_when_retry_same_is_relaxed(tmp_path):
    """The tempting fix (Greenlight's, stm32's): retry-same as a warning. The honest crash recovers,
    with the warning logged; test_sim_node's theft test shows what the same relaxation allows."""
    args = ("--updates", "3", FAST, "--policy-filter", "policy-commitment-retry-same:warn")
    crashed = sim_node(tmp_path, *args, "--crash-at", "after_sign_remote_before_persist:2")
    assert crashed.returncode == -signal.SIGKILL
    resumed = sim_node(tmp_path, *args)
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert "signer: policy failed: policy-commitment-retry-same" in resumed.stderr and "changed info" in resumed.stderr
    assert_all_agree(tmp_path, 3)
