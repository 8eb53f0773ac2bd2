"""The simulated node against our simulated signer, as real processes over real sockets: long
runs with HTLCs both ways, the JSON summary, the request shapes against a real hsmd session,
any-executable --signer, and the split-brain of the write-up (naive refused, wal carries on,
the compromised node's theft blocked unless retry-same is only a warning)."""

from __future__ import annotations

import json
import os
import stat

import pytest

import wire
from sim.node import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from sim.node_db import NODE_DB
from tests.sim.helpers import assert_all_agree, node_channel, sim_node, summary
from tests.paths import CAPTURE

pytestmark = pytest.mark.timeout(180)

CAPTURE = CAPTURE


@pytest.mark.slow
def test_hundreds_of_updates_with_htlcs_both_ways(tmp_path):
    proc = sim_node(tmp_path, "--updates", "200", "--seed", "7", "--signer-arg=--no-fsync")
    assert proc.returncode == EXIT_OK, proc.stderr
    s = summary(proc)
    assert s["updates_completed"] == s["updates_this_run"] == 200
    assert s["commitments_signed"] == 201  # the opening's commitment 0, then one per update
    assert s["signatures_verified"] == s["commitments_signed"] + s["htlc_txs_signed"]
    assert s["htlc_txs_signed"] > 200 and s["revocations"] == 200
    node = node_channel(tmp_path)
    kinds = {(u["kind"], u["by_node"]) for u in node["updates"]}
    assert kinds == {("add", True), ("add", False), ("fulfill", True), ("fulfill", False)}
    amounts = [h["amount_msat"] for st in node["states"].values() for h in st["htlcs"]]
    assert any(a < 546_000 for a in amounts) and any(a > 546_000 for a in amounts)  # trimmed and untrimmed
    assert_all_agree(tmp_path, 200)


def test_json_summary_reports_signatures_and_signer_version(tmp_path):
    proc = sim_node(tmp_path, "--updates", "3")
    assert proc.returncode == EXIT_OK, proc.stderr
    s = summary(proc)
    assert s["signer_version"] == s["signer_status_version"] == "hsmproxy-sim-signer-0.1"
    assert s["commitments_signed"] == 4 and s["signatures_verified"] >= 4
    # Running again resumes: nothing to do, then more.
    again = summary(sim_node(tmp_path, "--updates", "5"))
    assert again["updates_completed"] == 5 and again["updates_this_run"] == 2
    assert_all_agree(tmp_path, 5)
    assert stat.S_IMODE(os.stat(tmp_path / NODE_DB).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "hsm_secret").st_mode) == 0o600


def _shape(value):
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, str):
        return "bytes" if all(c in "0123456789abcdef" for c in value) else "str"
    return type(value).__name__


def test_requests_and_replies_have_the_shapes_of_a_real_hsmd_session(tmp_path):
    trace = tmp_path / "trace.jsonl"
    proc = sim_node(tmp_path / "d", "--updates", "4", "--trace", str(trace))
    assert proc.returncode == EXIT_OK, proc.stderr
    revoke_replies = [json.loads(line) for line in trace.read_text().splitlines() if '"hsmd_revoke_commitment_tx_reply"' in line]
    assert revoke_replies and all(r["fields"]["old_commitment_secret"] == wire.REDACTED for r in revoke_replies)  # no secrets in traces
    ours: dict[str, dict] = {}
    for line in trace.read_text().splitlines():
        r = json.loads(line)
        ours.setdefault(r["name"], _shape(r["fields"]))
    real: dict[str, dict] = {}
    for line in CAPTURE.read_text().splitlines():
        r = json.loads(line)
        if (r["kind"] == "msg" and r["session"] == "main" and r["name"] in ours and r["conn"] != "status"
                and "CLIENT ERROR" not in r.get("note", "")):
            msg = wire.decode(bytes.fromhex(r["hex"]))
            real.setdefault(msg.name, []).append(_shape(wire.to_jsonable(msg)["fields"]))
    expected = {"hsmd_init", "hsmd_init_reply_v4", "hsmd_new_channel", "hsmd_get_channel_basepoints", "hsmd_client_hsmfd",
                "hsmd_client_hsmfd_reply", "hsmd_get_per_commitment_point", "hsmd_setup_channel", "hsmd_sign_remote_commitment_tx",
                "hsmd_sign_remote_htlc_tx", "hsmd_sign_tx_reply", "hsmd_validate_commitment_tx", "hsmd_revoke_commitment_tx",
                "hsmd_revoke_commitment_tx_reply", "hsmd_validate_revocation", "hsmd_validate_commitment_tx_reply"}
    assert expected <= set(ours)
    for name in expected:
        shapes = real[name]
        # Our hsm_secret is a plain 32-byte one (hsm_secret_type 0); the capture's is a mnemonic with a bip86 base.
        if name == "hsmd_init_reply_v4":
            shapes = [{**s, "tlvs": {"hsm_secret_type": s["tlvs"]["hsm_secret_type"]}} for s in shapes]
        if name == "hsmd_setup_channel":  # we send no shutdown scripts; the capture had them
            shapes = [{**s, "local_shutdown_wallet_index": "NoneType"} for s in shapes]
        assert ours[name] in shapes, f"{name}: ours {ours[name]} not among the real shapes {shapes}"


def test_signer_may_be_any_executable(tmp_path):
    wrapper = tmp_path / "my-hsmd"
    wrapper.write_text(f"#!/bin/sh\nexec {os.sys.executable} -m hsmproxy.cli sim-signer \"$@\"\n")
    wrapper.chmod(0o755)
    proc = sim_node(tmp_path / "d", "--updates", "2", "--signer", str(wrapper))
    assert proc.returncode == EXIT_OK, proc.stderr
    assert summary(proc)["signer"] == str(wrapper)
    bad = sim_node(tmp_path / "e", "--updates", "2", "--signer", str(tmp_path / "missing"))
    assert bad.returncode == EXIT_USAGE and "not an executable file" in bad.stderr


def test_compromised_node_theft_is_blocked_by_retry_same(tmp_path):
    proc = sim_node(tmp_path, "--updates", "4", "--attacker-peer", "--pretend-crash-at", "2")
    assert proc.returncode == EXIT_REFUSED, proc.stderr
    assert "policy-commitment-retry-same" in proc.stderr
    s = summary(proc)
    assert s["updates_completed"] == 1 and s["attacker_publishable"] == []


def test_compromised_node_theft_succeeds_when_retry_same_is_only_a_warning(tmp_path):
    proc = sim_node(tmp_path, "--updates", "4", "--attacker-peer", "--pretend-crash-at", "2",
                    "--policy-filter", "policy-commitment-retry-same:warn")
    assert proc.returncode == EXIT_OK, proc.stderr
    s = summary(proc)
    (stale,) = s["attacker_publishable"]
    assert stale["commit_num"] == 2 and stale["htlcs"] != stale["committed_htlcs"]
    assert "signer: policy failed: policy-commitment-retry-same" in proc.stderr  # the warning is visible


@pytest.mark.parametrize("args,message", [
    (["--crash-at", "nowhere"], "unknown point 'nowhere'"),
    (["--pretend-crash-at", "1"], "needs --attacker-peer"),
    (["--policy-filter", "bogus"], "TAG:warn or TAG:error"),
    (["--updates", "-1"], "0 or more"),
])
def test_usage_errors_name_the_input_and_exit_2(tmp_path, args, message):
    proc = sim_node(tmp_path, *(["--updates", "2"] if "--updates" not in args else []), *args)
    assert proc.returncode == EXIT_USAGE and message in proc.stderr
    assert not (tmp_path / NODE_DB).exists()
