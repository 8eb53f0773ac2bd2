"""Node A: a small lightningd + channeld driving one channel with peer R through its signer.

It starts the signer as lightningd starts hsmd (signer_link), learns every key from it, builds
BOLT 3 anchor commitments in PSBTs, verifies every signature the signer returns, and runs the
commitment dance in channeld's order (reference hsmd-protocol.md §7), committing to SQLite
where channeld/lightningd commit. Two disciplines:

* ``naive`` (Core Lightning today): sign the peer's commitment, then persist, then send.
* ``wal`` (the write-up's fix): persist the intent (the exact updates and state) first, then
  sign, persist, send; after a crash, redo the signing from the intent.

Every step is resumable from the database and the peer's state, so a restart after a crash at
any point carries on (or, for ``naive`` in the split-brain window, shows the signer refusing).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import wire
from wire import permissions

from . import bolt3, crypto
from .bolt3 import ChannelParams, Party
from .channel_state import ChannelState, Update, UpdateRejected, propose
from .node_db import NodeDB
from .peer import AttackerPeer, PeerError, SimPeer, funding_sig_ok, htlc_sigs_ok, params_from_json, params_to_json
from .signer_link import SignerGone, SignerProcess
from .txpsbt import bitcoin_tx

DBID = 1
CHANNEL_TYPE = bytes.fromhex("401000")  # option_anchors_zero_fee_htlc_tx (22) + option_static_remotekey (12)
REGTEST_GENESIS = bytes.fromhex("06226e46111a0b59caaf126043eb5bbf28c34f3a5e332a1fc7b2b73cf188910f")
TEST_BIP32_VERSIONS = {"pubkey_version": 0x043587CF, "privkey_version": 0x04358394}
HSM_MIN_VERSION, HSM_MAX_VERSION = 5, 6

# How the node saves channel state around signing (see the module docstring).
NAIVE, WAL = "naive", "wal"
DISCIPLINES = (NAIVE, WAL)

# Where --crash-at can SIGKILL the node, in the order the dance reaches them.
CRASH_POINTS = (
    "before_sign_remote",                       # wal: the intent is persisted, nothing signed yet
    "after_sign_remote_before_persist",         # the split-brain window of naive
    "after_persist_before_send_commitsig",
    "after_send_commitsig",
    "after_validate_before_persist",
    "after_persist_before_revoke",
    "after_revoke_before_send_raa",
    "after_validate_revocation_before_persist",
    "after_round",
)

# sim-node's exit codes (chaos's runner reads them to decide whether to restart the node).
EXIT_OK, EXIT_USAGE, EXIT_SIGNER, EXIT_REFUSED, EXIT_PEER = 0, 2, 3, 4, 5
EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_USAGE: "usage",
    EXIT_SIGNER: "signer failed or died",
    EXIT_REFUSED: "signer refused on policy grounds (split-brain)",
    EXIT_PEER: "peer failed the channel",
}
LOG_UNUSUAL = 5  # status_log levels: 5 unusual, 6 broken


class NodeError(Exception):
    exit_code = EXIT_SIGNER


class SignerFailed(NodeError):
    exit_code = EXIT_SIGNER


class SignerRefused(NodeError):
    """The signer refused on policy grounds (VLS would have reported the node as compromised)."""

    exit_code = EXIT_REFUSED


class PeerFailed(NodeError):
    exit_code = EXIT_PEER


@dataclass
class NodeConfig:
    datadir: Path
    signer_argv: list[str]
    discipline: str = NAIVE
    seed: int = 1
    crash_at: tuple[str, int | None] | None = None
    attacker_peer: bool = False
    pretend_crash_at: int | None = None  # compromised node: leak, pretend to crash, re-sign at this index
    peer_adds_on_reconnect: bool = True
    signer_env: dict | None = None
    trace_path: Path | None = None


def init_request(min_version: int = HSM_MIN_VERSION, max_version: int = HSM_MAX_VERSION,
                 chainparams: bytes = REGTEST_GENESIS) -> wire.Message:
    """The ``hsmd_init`` the node sends first on the master connection (no dev overrides)."""
    return wire.build("hsmd_init", bip32_key_version=TEST_BIP32_VERSIONS, chainparams=chainparams,
                      hsm_encryption_key=None, dev_force_privkey=None, dev_force_bip32_seed=None,
                      dev_force_channel_secrets=None, dev_force_channel_secrets_shaseed=None,
                      hsm_wire_min_version=min_version, hsm_wire_max_version=max_version)


def parse_crash_at(spec: str) -> tuple[str, int | None]:
    point, _, n = spec.partition(":")
    if point not in CRASH_POINTS:
        raise ValueError(f"--crash-at {spec!r}: unknown point {point!r}; choose one of {', '.join(CRASH_POINTS)}")
    if n and not n.isdigit():
        raise ValueError(f"--crash-at {spec!r}: N must be a commitment number (an integer)")
    return point, int(n) if n else None


@dataclass
class Counters:
    commitments_signed: int = 0
    htlc_txs_signed: int = 0
    signatures_verified: int = 0
    peer_signatures_verified: int = 0
    revocations: int = 0
    rounds_this_run: int = 0


class Node:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.counters = Counters()
        cfg.datadir.mkdir(parents=True, exist_ok=True)
        self._lock = open(cfg.datadir / "node.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeError(f"{cfg.datadir}: another sim-node is running on this data directory") from None
        self.db = NodeDB(cfg.datadir)
        peer_cls = AttackerPeer if cfg.attacker_peer else SimPeer
        self.peer = peer_cls(cfg.datadir, cfg.seed, cfg.peer_adds_on_reconnect)
        self._trace = open(cfg.trace_path, "a") if cfg.trace_path else None
        self.signer: SignerProcess | None = None
        self.dance_started: float | None = None
        self._params: ChannelParams | None = None
        self.channel_conn = None

    # --- signer plumbing ---

    def _on_exchange(self, conn: str, request: wire.Message, reply: wire.Message) -> None:
        if self._trace:
            for direction, msg in (("node->signer", request), ("signer->node", reply)):
                self._trace.write(json.dumps({"conn": conn, "dir": direction, "name": msg.name, "type": msg.type,
                                              "fields": wire.to_jsonable(msg)["fields"]}) + "\n")
            self._trace.flush()

    @staticmethod
    def _on_status(msg: wire.Message) -> None:
        """Unusual and broken signer logs go to stderr, as lightningd logs them (policy warnings among them)."""
        if msg.name == "status_log" and msg.fields["level"] >= LOG_UNUSUAL:
            print(f"sim-node: signer: {msg.fields['entry']}", file=sys.stderr, flush=True)

    def _gone(self, what: str, exc: SignerGone) -> NodeError:
        """The signer died or refused during ``what``: exit as EXIT_SIGNER / EXIT_REFUSED says."""
        why = self.signer.explain(exc) if self.signer is not None else str(exc)
        return (SignerRefused if "policy failure" in why else SignerFailed)(f"{what}: {why}")

    def call(self, conn, msg: wire.Message, expect: str) -> wire.Message:
        try:
            reply = conn.request(msg)
        except SignerGone as exc:
            raise self._gone(msg.name, exc) from None
        if reply.name != expect:
            raise SignerFailed(f"{msg.name}: the signer answered {reply.name}, expected {expect}")
        return reply

    def start_signer(self) -> None:
        try:
            self.signer = SignerProcess(self.cfg.signer_argv, self.cfg.datadir, self.cfg.signer_env,
                                        on_status=self._on_status, on_exchange=self._on_exchange)
        except SignerGone as exc:
            raise self._gone("starting the signer", exc) from None
        reply = self.call(self.signer.master, init_request(), "hsmd_init_reply_v4")
        version = reply.fields["hsm_version"]
        if not HSM_MIN_VERSION <= version <= HSM_MAX_VERSION:
            raise SignerFailed(f"the signer negotiated hsmd version {version}; we need {HSM_MIN_VERSION}..{HSM_MAX_VERSION}")
        self.node_id = reply.fields["node_id"]

    def stop(self) -> None:
        if self.signer:
            self.signer.close()
        self.peer.kv.close()
        self.db.close()
        if self._trace:
            self._trace.close()
        self._lock.close()

    def crash_point(self, point: str, k: int) -> None:
        if self.cfg.crash_at and self.cfg.crash_at[0] == point and self.cfg.crash_at[1] in (None, k):
            print(f"sim-node: crash-at {point}:{k}: SIGKILL", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    # --- opening ---

    @property
    def peer_id(self) -> bytes:
        return self.peer.keys.node_id

    def params(self) -> ChannelParams:
        if self._params is None:  # fixed once the channel is open
            self._params = params_from_json(self.db.channel(DBID)["params"])
        return self._params

    def open_or_resume(self) -> None:
        master = self.signer.master
        if self.db.channel(DBID) is None:
            self.call(master, wire.build("hsmd_new_channel", id=self.peer_id, dbid=DBID), "hsmd_new_channel_reply")
        bp = self.call(master, wire.build("hsmd_get_channel_basepoints", peerid=self.peer_id, dbid=DBID),
                       "hsmd_get_channel_basepoints_reply").fields
        ours = Party.from_wire(bp["basepoints"], bp["funding_pubkey"])
        try:
            self.channel_conn = self.signer.client(self.peer_id, DBID, permissions.CHANNELD)
        except SignerGone as exc:  # the signer (or the proxy before it) died while handing out the fd
            raise self._gone("hsmd_client_hsmfd", exc) from None
        ch = self.db.channel(DBID)
        if ch is not None:
            if params_from_json(ch["params"]).node != ours:
                raise SignerFailed("the signer's channel keys changed since the channel was opened (a different hsm_secret?)")
            # channeld start and reestablish ask for these points (reference §7.5).
            self.get_point(ch["next_local"])
            if ch["next_local"] > 0:
                self.get_point(ch["next_local"] - 1)
            self.peer.reconnect()
            return
        points = {0: self.get_point(0), 1: self.get_point(1)}
        opened = self.peer.open(ours, points)
        peer: Party = opened["peer"]
        params = ChannelParams(ours, peer, True, opened["funding_txid"], opened["funding_txout"], opened["funding_sat"],
                               opened["to_self_delay"], opened["to_self_delay"])
        self.call(self.channel_conn, wire.build(
            "hsmd_setup_channel", is_outbound=True, channel_value=params.funding_sat, push_value=opened["push_msat"],
            funding_txid=params.funding_txid, funding_txout=params.funding_txout, local_to_self_delay=params.peer_to_self_delay,
            local_shutdown_script=b"", local_shutdown_wallet_index=None, remote_basepoints=peer.basepoints_wire(),
            remote_funding_pubkey=peer.funding_pubkey, remote_to_self_delay=params.node_to_self_delay,
            remote_shutdown_script=b"", channel_type=CHANNEL_TYPE), "hsmd_setup_channel_reply")
        state: ChannelState = opened["state"]
        with self.db.tx():  # the channel exists for us only once this commits (openingd's funder reply)
            self.db.create_channel(DBID, self.peer_id, params_to_json(params))
            self.db.set_indices(DBID, next_remote=0, next_local=0)
            for n, p in points.items():
                self.db.save_point(DBID, "node", n, p)
            for n, p in opened["points"].items():
                self.db.save_point(DBID, "peer", n, p)
            self.db.save_commitment(DBID, "remote", -1, [], state)
        self.round(0)

    def get_point(self, n: int) -> bytes:
        reply = self.call(self.channel_conn, wire.build("hsmd_get_per_commitment_point", n=n), "hsmd_get_per_commitment_point_reply")
        point = reply.fields["per_commitment_point"]
        known = self.db.point(DBID, "node", n)
        if known is not None and known != point:
            raise SignerFailed(f"the signer's per-commitment point {n} changed")
        return point

    # --- the dance ---

    def decide_updates(self, k: int, ignore_intent: bool = False) -> tuple[list[Update], ChannelState]:
        if k == 0:
            _, state = self.db.commitment(DBID, "remote", -1)
            return [], state
        if self.cfg.discipline == WAL and not ignore_intent:
            intent = self.db.intent(DBID, k)
            if intent is not None:
                return intent
        _, prev = self.db.commitment(DBID, "remote", k - 1)
        peer_updates = self.peer.updates_for_round(k)
        try:
            state = prev.apply(peer_updates)
        except UpdateRejected as exc:
            raise PeerFailed(f"peer's updates for commitment {k}: {exc}") from None
        chosen = []
        for u in propose(self.cfg.seed, True, f"round{k}", prev, [], 500 + k):
            try:
                state = state.apply([u])
                chosen.append(u)
            except UpdateRejected:
                pass  # the peer's updates took the room; offer it next time
        updates = peer_updates + chosen
        if self.cfg.discipline == WAL and not ignore_intent:
            with self.db.tx():
                self.db.save_intent(DBID, k, updates, state)
        return updates, state

    def sign_remote(self, k: int, state: ChannelState) -> tuple[bytes, list[bytes]]:
        """hsmd 19 then 20 per HTLC (channeld's calc_commitsigs); every returned signature verified."""
        params = self.params()
        point = self.db.point(DBID, "peer", k)
        commitment = bolt3.build_commitment(params, False, k, point, state.to_node_msat, state.to_peer_msat,
                                            state.wire_htlcs(), state.feerate_per_kw)
        reply = self.call(self.channel_conn, wire.build(
            "hsmd_sign_remote_commitment_tx",
            tx=bitcoin_tx(commitment.tx, params.funding_sat, bolt3.p2wsh(params.funding_wscript)),
            remote_funding_key=params.peer.funding_pubkey, remote_per_commit=point, option_static_remotekey=True,
            commit_num=k, htlcs=[h.to_wire() for h in state.wire_htlcs()], feerate=state.feerate_per_kw), "hsmd_sign_tx_reply")
        sig = reply.fields["sig"]
        if not funding_sig_ok(params, commitment, params.node.funding_pubkey, sig):
            raise SignerFailed(f"the signer's signature on the peer's commitment {k} does not verify")
        self.counters.commitments_signed += 1
        self.counters.signatures_verified += 1
        htlc_key = bolt3.derive_pubkey(params.node.htlc_basepoint, point)
        htlc_sigs = []
        for out in commitment.htlc_outputs:
            htx = bolt3.build_htlc_tx(commitment, out)
            value = out.htlc.amount_msat // 1000
            r = self.call(self.channel_conn, wire.build(
                "hsmd_sign_remote_htlc_tx", tx=bitcoin_tx(htx, value, bolt3.p2wsh(out.wscript), out.wscript),
                wscript=out.wscript, remote_per_commit_point=point, option_anchor_outputs=True), "hsmd_sign_tx_reply")
            digest = crypto.segwit_sighash(htx, 0, out.wscript, value, crypto.SIGHASH_SINGLE_ANYONECANPAY)
            if not crypto.verify_digest(htlc_key, digest, r.fields["sig"], crypto.SIGHASH_SINGLE_ANYONECANPAY):
                raise SignerFailed(f"the signer's HTLC signature on the peer's commitment {k} does not verify")
            self.counters.htlc_txs_signed += 1
            self.counters.signatures_verified += 1
            htlc_sigs.append(r.fields["sig"])
        return sig, htlc_sigs

    def send_commitment_signed(self, k, updates, sig, htlc_sigs) -> None:
        try:
            self.peer.commitment_signed(k, updates, sig, htlc_sigs)
        except PeerError as exc:
            raise PeerFailed(str(exc)) from None

    def round(self, k: int) -> None:
        """Commitment k on both sides, resumable from wherever a crash left it."""
        ch = self.db.channel(DBID)
        signed = None
        if ch["next_remote"] <= k:
            updates, state = self.decide_updates(k)
            self.crash_point("before_sign_remote", k)
            signed = self.sign_remote(k, state)
            if self.cfg.pretend_crash_at == k and not self.db.meta("pretended_crash"):
                updates, state, signed = self.pretend_crash(k, updates, signed)
            self.crash_point("after_sign_remote_before_persist", k)
            with self.db.tx():
                self.db.save_commitment(DBID, "remote", k, updates, state)
                self.db.set_indices(DBID, next_remote=k + 1)
            self.crash_point("after_persist_before_send_commitsig", k)
        updates, state = self.db.commitment(DBID, "remote", k)
        if self.peer.last_cs_received < k:
            if signed is None:  # retransmission: channeld signs the same commitment again
                signed = self.sign_remote(k, state)
            self.send_commitment_signed(k, updates, *signed)
        self.crash_point("after_send_commitsig", k)

        params = self.params()
        if self.db.channel(DBID)["next_local"] <= k:
            self.receive_commitment_signed(params, k, updates, state)
        if k >= 1 and self.peer.node_revoked < k - 1:
            self.revoke(k - 1)
        if k >= 1 and self.db.channel(DBID)["next_remote_revoke"] <= k - 1:
            self.receive_revoke_and_ack(k - 1)
        self.crash_point("after_round", k)

    def receive_commitment_signed(self, params: ChannelParams, k: int, updates, state: ChannelState) -> None:
        try:
            sig, htlc_sigs = self.peer.commitment_for_node(k)
        except PeerError as exc:
            raise PeerFailed(str(exc)) from None
        point = self.db.point(DBID, "node", k)
        ours = bolt3.build_commitment(params, True, k, point, state.to_node_msat, state.to_peer_msat,
                                      state.wire_htlcs(), state.feerate_per_kw)
        # channeld checks the peer's signatures itself before asking the signer.
        if not funding_sig_ok(params, ours, params.peer.funding_pubkey, sig) or not htlc_sigs_ok(
                ours, bolt3.derive_pubkey(params.peer.htlc_basepoint, point), htlc_sigs):
            raise PeerFailed(f"peer's signatures on our commitment {k} do not verify")
        self.counters.peer_signatures_verified += 1 + len(htlc_sigs)
        reply = self.call(self.channel_conn, wire.build(
            "hsmd_validate_commitment_tx", tx=bitcoin_tx(ours.tx, params.funding_sat, bolt3.p2wsh(params.funding_wscript)),
            htlcs=[h.to_wire() for h in state.wire_htlcs()], commit_num=k, feerate=state.feerate_per_kw,
            sig=sig, htlc_sigs=htlc_sigs), "hsmd_validate_commitment_tx_reply")
        next_point = reply.fields["next_per_commitment_point"]
        self.crash_point("after_validate_before_persist", k)
        with self.db.tx():
            self.db.save_commitment(DBID, "local", k, updates, state, [sig.hex()] + [s.hex() for s in htlc_sigs])
            self.db.save_point(DBID, "node", k + 1, next_point)
            self.db.set_indices(DBID, next_local=k + 1)
        self.crash_point("after_persist_before_revoke", k)

    def revoke(self, n: int) -> None:
        reply = self.call(self.channel_conn, wire.build("hsmd_revoke_commitment_tx", commit_num=n), "hsmd_revoke_commitment_tx_reply")
        secret, next_point = reply.fields["old_commitment_secret"], reply.fields["next_per_commitment_point"]
        if crypto.pubkey_of(secret) != self.db.point(DBID, "node", n):
            raise SignerFailed(f"the signer's revocation secret {n} does not match its point {n}")
        known = self.db.point(DBID, "node", n + 2)
        if known is not None and known != next_point:
            raise SignerFailed(f"the signer's point {n + 2} changed")
        self.counters.revocations += 1
        self.crash_point("after_revoke_before_send_raa", n + 1)
        try:
            self.peer.receive_revoke_and_ack(n, secret, next_point)
        except PeerError as exc:
            raise PeerFailed(str(exc)) from None

    def receive_revoke_and_ack(self, n: int) -> None:
        try:
            secret, next_point = self.peer.revoke_and_ack_for_node(n)
        except PeerError as exc:
            raise PeerFailed(str(exc)) from None
        if crypto.pubkey_of(secret) != self.db.point(DBID, "peer", n):
            raise PeerFailed(f"peer's revocation secret {n} does not match its point")
        self.call(self.channel_conn, wire.build("hsmd_validate_revocation", revoke_num=n, per_commitment_secret=secret),
                  "hsmd_validate_revocation_reply")
        self.crash_point("after_validate_revocation_before_persist", n + 1)
        with self.db.tx():
            self.db.save_peer_secret(DBID, n, secret)
            self.db.save_point(DBID, "peer", n + 2, next_point)
            self.db.set_indices(DBID, next_remote_revoke=n + 1)

    def pretend_crash(self, k: int, updates, signed):
        """Compromised node: leak the signature to the colluding peer, pretend to crash and come
        back believing commitment k was never signed, then sign k again with the peer's new updates."""
        if not isinstance(self.peer, AttackerPeer):
            raise NodeError("--pretend-crash-at needs --attacker-peer (someone must receive the leaked signature)")
        self.peer.keep_leaked(k, updates, signed[0])
        with self.db.tx():
            self.db.set_meta("pretended_crash", k)
        self.peer.reconnect()
        updates, state = self.decide_updates(k, ignore_intent=True)
        return updates, state, self.sign_remote(k, state)

    # --- driving ---

    def run(self, target_updates: int) -> dict:
        started = time.monotonic()
        self.start_signer()
        self.open_or_resume()
        ch = self.db.channel(DBID)
        if ch["next_local"] == 0 or self.peer.last_cs_received < 0:
            self.round(0)  # a crash interrupted the opening's first commitments
        self.dance_started = time.monotonic()
        while True:
            k = self.db.channel(DBID)["next_remote_revoke"] + 1
            if k > target_updates:
                break
            self.round(k)
            self.counters.rounds_this_run += 1
        return self.summary(time.monotonic() - started)

    def _rate(self) -> float | None:
        """Commitment updates per second of the dance itself (start-up and opening excluded)."""
        if self.dance_started is None or not self.counters.rounds_this_run:
            return None
        return round(self.counters.rounds_this_run / (time.monotonic() - self.dance_started), 2)

    def summary(self, elapsed: float) -> dict:
        ch = self.db.channel(DBID)
        _, state = self.db.commitment(DBID, "remote", ch["next_remote"] - 1)
        out = {
            "discipline": self.cfg.discipline, "seed": self.cfg.seed,
            "signer": self.cfg.signer_argv[0] if len(self.cfg.signer_argv) == 1 else " ".join(self.cfg.signer_argv),
            "signer_version": self.signer.version_output if self.signer else None,
            "signer_status_version": self.signer.status.version if self.signer else None,
            "updates_completed": ch["next_remote_revoke"], "updates_this_run": self.counters.rounds_this_run,
            "commitments_signed": self.counters.commitments_signed, "htlc_txs_signed": self.counters.htlc_txs_signed,
            "signatures_verified": self.counters.signatures_verified,
            "peer_signatures_verified": self.counters.peer_signatures_verified, "revocations": self.counters.revocations,
            "next_remote": ch["next_remote"], "next_local": ch["next_local"], "next_remote_revoke": ch["next_remote_revoke"],
            "to_node_msat": state.to_node_msat, "to_peer_msat": state.to_peer_msat, "htlcs": len(state.htlcs),
            "elapsed_s": round(elapsed, 3),
            "updates_per_s": self._rate(),
        }
        if isinstance(self.peer, AttackerPeer):
            out["attacker_publishable"] = self.peer.publishable()
        return out
