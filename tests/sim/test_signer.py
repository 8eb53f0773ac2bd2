"""The simulated signer as lightningd sees lightning_hsmd: a real process on fd 0/3, version
negotiation, fd passing, per-client permissions, bad client vs bad master, and (sans-IO, with a
real channel) the rules that rebuild transactions: policy-commitment and policy-htlc-other."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import wire
from wire import permissions
from sim import bolt3, crypto
from sim.bolt3 import ChannelParams, Htlc
from sim.node import init_request
from sim.peer import PeerSecrets
from sim.signer_core import BadRequest, Client, SignerCore
from sim.signer_link import SignerGone, SignerProcess, read_exact
from sim.signer_store import STATE_DIR
from sim.policy import PolicyFilter
from sim.txpsbt import bitcoin_tx

pytestmark = pytest.mark.timeout(60)

SIGNER = [sys.executable, "-m", "hsmproxy.cli", "sim-signer"]
PEER_ID = bytes.fromhex("02" + "11" * 32)


@pytest.fixture
def signer(tmp_path):
    proc = SignerProcess(SIGNER, tmp_path)
    yield proc
    proc.close()  # closes the master (the signer exits on EOF), waits, kills if it must


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_version_flag_and_status_version_first(signer):
    assert signer.version_output == "hsmproxy-sim-signer-0.1"
    assert signer.status.version_seen.wait(5)
    assert signer.status.messages[0].name == "status_version"
    reply = signer.master.request(init_request())
    assert reply.name == "hsmd_init_reply_v4" and reply.fields["hsm_version"] == 6
    assert 40 in reply.fields["hsm_capabilities"] and len(reply.fields["bip32"]) == 78


def test_version_is_negotiated_down(signer):
    assert signer.master.request(init_request(5, 5)).fields["hsm_version"] == 5


@pytest.mark.parametrize("first", [init_request(7, 8), wire.build("hsmd_new_channel", id=PEER_ID, dbid=1)],
                         ids=["no-common-version", "before-init"])
def test_bad_master_request_is_status_fail_and_exit_242(signer, first):
    with pytest.raises(SignerGone):
        signer.master.request(first)
    assert signer.proc.wait(timeout=10) == 242
    assert wait_for(lambda: any(m.name == "status_fail" for m in signer.status.messages))


def test_master_eof_exits_2(signer):
    signer.master.request(init_request())
    signer.master.close()
    assert signer.proc.wait(timeout=10) == 2


def bad_requests(signer):
    return [m for m in signer.status.messages if m.name == "hsmstatus_client_bad_request"]


@pytest.mark.parametrize("body,description", [
    (wire.encode(wire.build("hsmd_sign_remote_htlc_tx", tx={"tx": bytes.fromhex("02000000000000000000"), "psbt": b"psbt\xff\x00"}, wscript=b"",
                            remote_per_commit_point=PEER_ID, option_anchor_outputs=True)), "capability to run 20"),
    (bytes.fromhex("270f"), "capability to run 9999"),
    (bytes.fromhex("0012000000"), "Error parsing"),
], ids=["permission", "unknown-type", "truncated"])
def test_bad_client_request_is_reported_and_only_that_client_closed(signer, body, description):
    signer.master.request(init_request())
    client = signer.client(PEER_ID, 1, 8)  # COMMITMENT_POINT only, like part of openingd
    client.sock.sendall(wire.frame(body))
    with pytest.raises(SignerGone):
        read_exact(client.sock, 4)
    assert wait_for(lambda: bad_requests(signer))
    (report,) = bad_requests(signer)
    assert description in report.fields["description"] and report.fields["msg"] == body
    assert report.fields["id"] == PEER_ID
    # The master and other clients are still served.
    assert signer.master.request(wire.build("hsmd_derive_secret", info=b"x")).name == "hsmd_derive_secret_reply"
    other = signer.client(PEER_ID, 2, permissions.CHANNELD)
    assert other.request(wire.build("hsmd_get_per_commitment_point", n=0)).name == "hsmd_get_per_commitment_point_reply"


def test_new_client_for_the_same_channel_closes_the_old_one(signer):
    signer.master.request(init_request())
    old = signer.client(PEER_ID, 1, permissions.CHANNELD)
    assert old.request(wire.build("hsmd_get_per_commitment_point", n=0)).fields["old_commitment_secret"] is None
    new = signer.client(PEER_ID, 1, permissions.CHANNELD)
    with pytest.raises(SignerGone):
        read_exact(old.sock, 1)
    assert new.request(wire.build("hsmd_get_per_commitment_point", n=1)).name == "hsmd_get_per_commitment_point_reply"


def test_policy_refusal_reaches_the_node_as_a_closed_client_with_the_tag(signer):
    signer.master.request(init_request())
    client = signer.client(PEER_ID, 1, permissions.CHANNELD)
    with pytest.raises(SignerGone):
        client.request(wire.build("hsmd_revoke_commitment_tx", commit_num=7))
    assert wait_for(lambda: bad_requests(signer))
    assert "policy-revoke-new-commitment-signed" in bad_requests(signer)[0].fields["description"]


def test_cannot_run_without_the_hsmd_fd_layout():
    out = subprocess.run(SIGNER, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "fd 3" in out.stderr


# --- sans-IO: the rules that rebuild the transactions, with a real channel ---

class Channel:
    """Our SignerCore with channel dbid 1 set up against a counterparty whose keys we hold."""

    def __init__(self, policy_filter=None):
        self.core = SignerCore(b"\x07" * 32, policy_filter)
        self.core.version = 6
        self.peer = PeerSecrets(99)
        self.client = Client(PEER_ID, 1, permissions.CHANNELD)
        ours = self.core.keys.channel(PEER_ID, 1)
        node = bolt3.Party(ours.funding_pubkey, *[ours.basepoints_wire()[k] for k in ("revocation", "payment", "htlc", "delayed_payment")])
        self.params = ChannelParams(node, self.peer.party(), True, b"\x33" * 32, 0, 1_000_000, 144, 144)
        self.call("hsmd_setup_channel", is_outbound=True, channel_value=1_000_000, push_value=0, funding_txid=b"\x33" * 32,
                  funding_txout=0, local_to_self_delay=144, local_shutdown_script=b"", local_shutdown_wallet_index=None,
                  remote_basepoints=self.peer.party().basepoints_wire(), remote_funding_pubkey=self.peer.party().funding_pubkey,
                  remote_to_self_delay=144, remote_shutdown_script=b"", channel_type=bytes.fromhex("401000"))
        self.htlcs = [Htlc(True, 5_000_000, b"\x44" * 32, 600)]

    def call(self, name, **fields):
        return self.core.handle(self.client, wire.build(name, **fields)).reply

    def remote_commitment(self, k):
        return bolt3.build_commitment(self.params, False, k, self.peer.point(k), 700_000_000, 295_000_000, self.htlcs, 253)

    def sign_remote(self, k, tx):
        return self.call("hsmd_sign_remote_commitment_tx", tx=bitcoin_tx(tx, 1_000_000, bolt3.p2wsh(self.params.funding_wscript)),
                         remote_funding_key=self.peer.party().funding_pubkey, remote_per_commit=self.peer.point(k),
                         option_static_remotekey=True, commit_num=k, htlcs=[h.to_wire() for h in self.htlcs], feerate=253)


def test_policy_commitment_refuses_a_tx_that_is_not_the_recomposed_one():
    ch = Channel()
    tx = ch.remote_commitment(0).tx
    anchor = next(o for o in tx.vout if o.value == bolt3.ANCHOR_SAT)
    anchor.value += 1000  # not an anchor any more (same fee: the biggest output pays for it)
    max(tx.vout, key=lambda o: o.value).value -= 1000
    with pytest.raises(BadRequest, match="policy-commitment: recomposed tx mismatch"):
        ch.sign_remote(0, tx)
    warned = Channel(PolicyFilter.parse(["policy-commitment:warn"]))
    assert warned.sign_remote(0, tx).name == "hsmd_sign_tx_reply"


def test_policy_commitment_fee_range_refuses_balances_that_leave_a_wrong_fee():
    ch = Channel()
    tx = ch.remote_commitment(0).tx
    max(tx.vout, key=lambda o: o.value).value -= 50_000  # 50k sat vanish into fees
    with pytest.raises(BadRequest, match="policy-commitment-fee-range"):
        ch.sign_remote(0, tx)
    warned = Channel(PolicyFilter.parse(["policy-commitment-fee-range:warn"]))
    assert warned.sign_remote(0, tx).name == "hsmd_sign_tx_reply"


def test_policy_htlc_other_refuses_an_htlc_tx_we_did_not_commit_to():
    ch = Channel()
    commitment = ch.remote_commitment(0)
    sig = ch.sign_remote(0, commitment.tx).fields["sig"]
    digest = crypto.segwit_sighash(commitment.tx, 0, ch.params.funding_wscript, 1_000_000, crypto.SIGHASH_ALL)
    assert crypto.verify_digest(ch.params.node.funding_pubkey, digest, sig)
    (out,) = commitment.htlc_outputs
    htx = bolt3.build_htlc_tx(commitment, out)
    good = ch.call("hsmd_sign_remote_htlc_tx", tx=bitcoin_tx(htx, 5000, bolt3.p2wsh(out.wscript), out.wscript),
                   wscript=out.wscript, remote_per_commit_point=ch.peer.point(0), option_anchor_outputs=True)
    assert good.fields["sig"][64] == crypto.SIGHASH_SINGLE_ANYONECANPAY
    htx.vout[0].value = 4000  # steal 1000 sat into fees
    request = dict(tx=bitcoin_tx(htx, 5000, bolt3.p2wsh(out.wscript), out.wscript), wscript=out.wscript,
                   remote_per_commit_point=ch.peer.point(0), option_anchor_outputs=True)
    with pytest.raises(BadRequest, match="policy-htlc-other"):
        ch.call("hsmd_sign_remote_htlc_tx", **request)
    ch.core.filter = PolicyFilter.parse(["policy-htlc-other:warn"])
    assert ch.call("hsmd_sign_remote_htlc_tx", **request).name == "hsmd_sign_tx_reply"


def test_old_protocol_point_request_releases_secret_only_when_revocable():
    ch = Channel()
    ch.core.version = 5
    state = ch.core.channels[(PEER_ID, 1)].policy_state
    state.next_holder_commit_num = 1  # commitment 0 is current
    assert ch.call("hsmd_get_per_commitment_point", n=1).fields["old_commitment_secret"] is None
    with pytest.raises(BadRequest, match="policy-revoke-new-commitment-signed"):
        ch.call("hsmd_get_per_commitment_point", n=2)  # would release secret 0 while 0 is current
    state.next_holder_commit_num = 2  # 0 revoked
    secret0 = ch.call("hsmd_get_per_commitment_point", n=2).fields["old_commitment_secret"]
    assert crypto.pubkey_of(secret0) == ch.call("hsmd_get_per_commitment_point", n=0).fields["per_commitment_point"]


def test_forget_channel_deletes_its_state(tmp_path, signer):
    signer.master.request(init_request())
    signer.master.request(wire.build("hsmd_new_channel", id=PEER_ID, dbid=5))
    state_dir = tmp_path / STATE_DIR
    assert len(list(state_dir.glob("*.json"))) == 1
    signer.master.request(wire.build("hsmd_forget_channel", id=PEER_ID, dbid=5))
    assert list(state_dir.glob("*.json")) == []


def test_pipelined_requests_get_in_order_replies_and_clients_are_served_concurrently(signer):
    signer.master.request(init_request())
    a = signer.client(PEER_ID, 1, permissions.CHANNELD)
    b = signer.client(PEER_ID, 2, permissions.CHANNELD)
    burst = b"".join(wire.frame(wire.encode(wire.build("hsmd_get_per_commitment_point", n=n))) for n in (0, 1))
    a.sock.sendall(burst)  # two requests in one write, like the capture's pipelining probe
    assert b.request(wire.build("hsmd_get_per_commitment_point", n=0)).name == "hsmd_get_per_commitment_point_reply"
    replies = []
    for _ in range(2):
        length = int.from_bytes(read_exact(a.sock, 4), "big")
        replies.append(wire.decode(read_exact(a.sock, length)))
    points = [r.fields["per_commitment_point"] for r in replies]
    assert points[0] != points[1]
    assert points == [a.request(wire.build("hsmd_get_per_commitment_point", n=n)).fields["per_commitment_point"] for n in (0, 1)]


PREINIT = wire.build("hsmd_dev_preinit", tlvs={"fail_preapprove": False, "no_preapprove_check": False, "warn_on_overgrind": True})


def test_developer_preinit_gets_no_reply_and_init_follows(tmp_path):
    signer = SignerProcess(SIGNER + ["--developer"], tmp_path)
    try:
        signer.master.sock.sendall(wire.frame(wire.encode(PREINIT)))
        assert signer.master.request(init_request()).name == "hsmd_init_reply_v4"
        assert signer.master.request(wire.build("hsmd_dev_memleak")).fields["leak"] is False
    finally:
        signer.close()


def test_dev_memleak_without_developer_is_fatal(signer):
    signer.master.request(init_request())
    with pytest.raises(SignerGone):
        signer.master.request(wire.build("hsmd_dev_memleak"))
    assert signer.proc.wait(timeout=10) == 242
