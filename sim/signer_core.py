"""The simulated signer's protocol core, sans-IO: a decoded request from a client in, a reply
(or a refusal) out, plus the channels whose state must be persisted before the reply leaves.

It answers like lightning_hsmd (reference hsmd-protocol.md) and validates like VLS (policy.py).
The trio shell (signer_proc.py) owns the sockets, fd passing and the state files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import wire
from wire import permissions
from coincurve import PrivateKey

from . import bolt3, crypto
from .bolt3 import ChannelParams, Htlc, Party
from .policy import (FEE_RANGE, HTLC_OTHER, RECOMPOSED_MISMATCH, ChannelPolicy, CommitmentInfo, EnforcementState,
                     PolicyError, PolicyFilter)
from .signer_keys import NodeKeys
from .txpsbt import spent_output

MIN_VERSION, MAX_VERSION = 5, 6
CAPABILITIES = [32, 34, 40]  # message numbers beyond the baseline that we implement

MASTER_PERMISSIONS = permissions.MASTER_SOCKET


@dataclass
class Client:
    peer_id: bytes
    dbid: int
    permissions: int
    is_master: bool = False

    def can(self, msg_type: int) -> bool:
        return permissions.allows(self.permissions, msg_type)


class BadRequest(Exception):
    """hsmd's answer to a bad request: a bad client is reported and closed; a bad master is fatal."""


class NotInitialized(Exception):
    pass


@dataclass
class ChannelRecord:
    peer_id: bytes
    dbid: int
    setup: dict | None = None
    policy_state: EnforcementState = field(default_factory=EnforcementState)

    @property
    def key(self) -> str:
        return f"{self.peer_id.hex()}-{self.dbid}"

    def to_json(self) -> dict:
        setup = None
        if self.setup is not None:
            setup = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in self.setup.items() if k != "remote_basepoints"}
            setup["remote_basepoints"] = {k: v.hex() for k, v in self.setup["remote_basepoints"].items()}
        return {"peer_id": self.peer_id.hex(), "dbid": self.dbid, "setup": setup, "enforcement_state": self.policy_state.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "ChannelRecord":
        setup = d["setup"]
        if setup is not None:
            byte_fields = ("funding_txid", "local_shutdown_script", "remote_funding_pubkey", "remote_shutdown_script", "channel_type")
            setup = {k: (bytes.fromhex(v) if k in byte_fields else v) for k, v in setup.items()}
            setup["remote_basepoints"] = {k: bytes.fromhex(v) for k, v in d["setup"]["remote_basepoints"].items()}
        return cls(bytes.fromhex(d["peer_id"]), d["dbid"], setup, EnforcementState.from_json(d["enforcement_state"]))


@dataclass
class Outcome:
    reply: wire.Message | None
    pass_fd_for: Client | None = None  # hsmd_client_hsmfd: send a new client's fd after the reply
    dirty: list[ChannelRecord] = field(default_factory=list)  # persist before replying
    forgotten: list[ChannelRecord] = field(default_factory=list)  # delete before replying
    logs: list[tuple[int, str]] = field(default_factory=list)  # (level, entry) for status_log


LOG_DBG, LOG_UNUSUAL, LOG_BROKEN = 3, 5, 6


class SignerCore:
    def __init__(self, root_secret: bytes, policy_filter: PolicyFilter | None = None, channels: list[ChannelRecord] | None = None,
                 developer: bool = False):
        self.developer = developer
        self.keys = NodeKeys(root_secret)
        self.filter = policy_filter or PolicyFilter()
        self.version: int | None = None
        self.channels: dict[tuple[bytes, int], ChannelRecord] = {(c.peer_id, c.dbid): c for c in channels or []}
        self._signed_remote: dict[bytes, bolt3.Commitment] = {}  # remote point -> last signed commitment

    @property
    def initialized(self) -> bool:
        return self.version is not None

    # --- dispatch ---

    def handle(self, client: Client, msg: wire.Message) -> Outcome:
        if not client.can(msg.type):
            raise BadRequest(f"client does not have capability to run {msg.type}")
        if msg.type not in (11, 99) and not self.initialized:
            raise NotInitialized("hsmd was not initialized correctly")
        handler = getattr(self, "_" + msg.name.removeprefix("hsmd_"), None)
        if handler is None:
            raise BadRequest(f"{msg.name} is not supported by the simulated signer")
        outcome = Outcome(None)
        if not client.is_master:
            outcome.logs.append((LOG_DBG, f"Got WIRE_{msg.name.upper()}"))
        try:
            outcome.reply = handler(client, msg.fields, outcome)
        except PolicyError as exc:
            raise BadRequest(f"policy failure: {exc}") from None
        return outcome

    def _channel(self, client: Client, peer_id: bytes | None = None, dbid: int | None = None) -> ChannelRecord:
        key = (peer_id if peer_id is not None else client.peer_id, dbid if dbid is not None else client.dbid)
        record = self.channels.get(key)
        if record is None:
            record = self.channels[key] = ChannelRecord(*key)
        return record

    def _policy(self, record: ChannelRecord, outcome: Outcome) -> ChannelPolicy:
        policy = ChannelPolicy(record.policy_state, self.filter)
        outcome.dirty.append(record)
        return policy

    def _params(self, record: ChannelRecord) -> ChannelParams:
        if record.setup is None:
            raise BadRequest(f"channel {record.dbid} is not set up (send hsmd_setup_channel first)")
        s = record.setup
        ours = self.keys.channel(record.peer_id, record.dbid)
        return ChannelParams(
            node=Party(ours.funding_pubkey, *[ours.basepoints_wire()[k] for k in ("revocation", "payment", "htlc", "delayed_payment")]),
            peer=Party.from_wire(s["remote_basepoints"], s["remote_funding_pubkey"]),
            node_is_opener=s["is_outbound"], funding_txid=s["funding_txid"], funding_txout=s["funding_txout"],
            funding_sat=s["channel_value"], node_to_self_delay=s["remote_to_self_delay"], peer_to_self_delay=s["local_to_self_delay"],
        )

    # --- lifecycle (master) ---

    def _init(self, client, f, outcome):
        if f["hsm_wire_min_version"] > MAX_VERSION or f["hsm_wire_max_version"] < MIN_VERSION:
            raise BadRequest(f"version range {f['hsm_wire_min_version']}-{f['hsm_wire_max_version']} does not overlap ours {MIN_VERSION}-{MAX_VERSION}")
        self.version = min(f["hsm_wire_max_version"], MAX_VERSION)
        return wire.build("hsmd_init_reply_v4", hsm_version=self.version, hsm_capabilities=CAPABILITIES,
                          node_id=self.keys.node_id, bip32=self.keys.bip32_ext_key(), bolt12=self.keys.bolt12_pubkey,
                          tlvs={"hsm_secret_type": 0})

    def _dev_preinit(self, client, f, outcome):
        self._need_developer("hsmd_dev_preinit")
        return None  # lightningd --developer sends it before hsmd_init; hsmd never answers it

    def _dev_memleak(self, client, f, outcome):
        self._need_developer("hsmd_dev_memleak")
        return wire.build("hsmd_dev_memleak_reply", leak=False)

    def _need_developer(self, name: str) -> None:
        if not self.developer:
            raise BadRequest(f"{name} needs --developer")

    def _client_hsmfd(self, client, f, outcome):
        outcome.pass_fd_for = Client(f["id"], f["dbid"], f["permissions"])
        outcome.logs.append((LOG_DBG, f"new_client: {f['dbid']}"))
        return wire.build("hsmd_client_hsmfd_reply")

    def _new_channel(self, client, f, outcome):
        outcome.dirty.append(self._channel(client, f["id"], f["dbid"]))
        return wire.build("hsmd_new_channel_reply")

    def _forget_channel(self, client, f, outcome):
        record = self.channels.pop((f["id"], f["dbid"]), None)
        if record is not None:
            outcome.forgotten.append(record)
        return wire.build("hsmd_forget_channel_reply")

    def _get_channel_basepoints(self, client, f, outcome):
        ours = self.keys.channel(f["peerid"], f["dbid"])
        return wire.build("hsmd_get_channel_basepoints_reply", basepoints=ours.basepoints_wire(), funding_pubkey=ours.funding_pubkey)

    def _derive_secret(self, client, f, outcome):
        return wire.build("hsmd_derive_secret_reply", secret=self.keys.derive_secret(f["info"]))

    def _ecdh_req(self, client, f, outcome):
        return wire.build("hsmd_ecdh_resp", ss=PrivateKey(self.keys.node_secret).ecdh(f["point"]))

    # --- channel (client fd) ---

    def _setup_channel(self, client, f, outcome):
        record = self._channel(client)
        record.setup = dict(f)
        outcome.dirty.append(record)
        return wire.build("hsmd_setup_channel_reply")

    def _check_outpoint(self, client, f, outcome):
        return wire.build("hsmd_check_outpoint_reply", is_buried=True)

    def _lock_outpoint(self, client, f, outcome):
        return wire.build("hsmd_lock_outpoint_reply")

    def _shaseed(self, client) -> bytes:
        return self.keys.channel(client.peer_id, client.dbid).shaseed

    def _get_per_commitment_point(self, client, f, outcome):
        record = self._channel(client)
        n = f["n"]
        ChannelPolicy(record.policy_state, self.filter).get_per_commitment_point(n)
        old = None
        if self.version < 6 and n >= 2:  # older protocol: the reply also releases secret n-2
            policy = ChannelPolicy(record.policy_state, self.filter)
            policy.release_holder_secret(n - 2)
            outcome.logs += [(LOG_UNUSUAL, w) for w in policy.take_warnings()]
            old = bolt3.commitment_secret(self._shaseed(client), n - 2)
        return wire.build("hsmd_get_per_commitment_point_reply",
                          per_commitment_point=bolt3.commitment_point(self._shaseed(client), n), old_commitment_secret=old)

    def _check_future_secret(self, client, f, outcome):
        correct = bolt3.commitment_secret(self._shaseed(client), f["n"]) == f["commitment_secret"]
        return wire.build("hsmd_check_future_secret_reply", correct=correct)

    def _rebuild(self, params: ChannelParams, node_is_broadcaster: bool, commit_num: int, point: bytes, tx_field: dict,
                 htlcs: list[Htlc], feerate: int, policy: ChannelPolicy) -> tuple[bolt3.Commitment, CommitmentInfo]:
        """Recompose the commitment from validated values and compare it with the one supplied (VLS's phase 1)."""
        try:
            tx, value, spk = spent_output(tx_field)
        except ValueError as exc:
            raise BadRequest(f"commitment tx: {exc}") from None
        keys = bolt3.output_scripts(params, node_is_broadcaster, point)
        to_b, to_c = bolt3.output_values(tx, keys)
        built = bolt3.assemble_commitment(params, node_is_broadcaster, commit_num, point, to_b, to_c, htlcs)
        policy.check(built.tx.serialize() == tx.serialize(), RECOMPOSED_MISMATCH,
                     f"recomposed tx mismatch for commitment {commit_num}")
        policy.check(value == params.funding_sat and spk == bolt3.p2wsh(params.funding_wscript), RECOMPOSED_MISMATCH,
                     "the PSBT's spent output is not the funding output")
        # The balances were read off the tx, so check what they leave for the fee: the BOLT 3 fee plus at
        # most what trimming may add (trimmed HTLCs and up to two trimmed balances below the dust limit).
        untrimmed = len(built.htlc_outputs)
        trimmed_sat = sum(h.amount_msat // 1000 for h in htlcs) - sum(o.htlc.amount_msat // 1000 for o in built.htlc_outputs)
        fee = params.funding_sat - sum(o.value for o in tx.vout)
        low = bolt3.commitment_fee_sat(feerate, untrimmed)
        policy.check(low <= fee <= low + trimmed_sat + 2 * params.dust_limit_sat, FEE_RANGE,
                     f"commitment {commit_num} pays {fee} sat in fees, expected {low} (+ trimmed outputs)")
        side = (lambda h: h.offered_by_node == node_is_broadcaster)
        as_tuple = (lambda h: (h.amount_msat // 1000, h.payment_hash.hex(), h.cltv_expiry))
        info = CommitmentInfo(
            is_counterparty_broadcaster=not node_is_broadcaster, to_broadcaster_sat=to_b, to_countersigner_sat=to_c,
            offered_htlcs=tuple(sorted(as_tuple(h) for h in htlcs if side(h))),
            received_htlcs=tuple(sorted(as_tuple(h) for h in htlcs if not side(h))),
            feerate_per_kw=feerate,
        )
        return built, info

    def _sign_remote_commitment_tx(self, client, f, outcome):
        record = self._channel(client)
        params = self._params(record)
        policy = self._policy(record, outcome)
        htlcs = [Htlc.from_wire(h) for h in f["htlcs"]]
        point = f["remote_per_commit"]
        built, info = self._rebuild(params, False, f["commit_num"], point, f["tx"], htlcs, f["feerate"], policy)
        policy.sign_counterparty_commitment(f["commit_num"], point, info)
        outcome.logs += [(LOG_UNUSUAL, w) for w in policy.take_warnings()]
        self._signed_remote[point] = built
        secret = self.keys.channel(client.peer_id, client.dbid).funding
        digest = crypto.segwit_sighash(built.tx, 0, params.funding_wscript, params.funding_sat, crypto.SIGHASH_ALL)
        return wire.build("hsmd_sign_tx_reply", sig=crypto.sign_digest(secret, digest, crypto.SIGHASH_ALL))

    def _sign_remote_htlc_tx(self, client, f, outcome):
        record = self._channel(client)
        self._params(record)
        policy = ChannelPolicy(record.policy_state, self.filter)
        point = f["remote_per_commit_point"]
        try:
            tx, value, _ = spent_output(f["tx"])
        except ValueError as exc:
            raise BadRequest(f"htlc tx: {exc}") from None
        commitment = self._signed_remote.get(point)
        outputs = [o for o in (commitment.htlc_outputs if commitment else []) if o.wscript == f["wscript"]]
        matches = any(bolt3.build_htlc_tx(commitment, o).serialize() == tx.serialize() and o.htlc.amount_msat // 1000 == value
                      for o in outputs)
        policy.check(matches, HTLC_OTHER, "htlc tx does not spend an HTLC output of a counterparty commitment we signed")
        outcome.logs += [(LOG_UNUSUAL, w) for w in policy.take_warnings()]
        sighash = crypto.SIGHASH_SINGLE_ANYONECANPAY if f["option_anchor_outputs"] else crypto.SIGHASH_ALL
        htlc_secret = bolt3.derive_privkey(self.keys.channel(client.peer_id, client.dbid).htlc_base, point)
        digest = crypto.segwit_sighash(tx, 0, f["wscript"], value, sighash)
        return wire.build("hsmd_sign_tx_reply", sig=crypto.sign_digest(htlc_secret, digest, sighash))

    def _validate_commitment_tx(self, client, f, outcome):
        record = self._channel(client)
        params = self._params(record)
        policy = self._policy(record, outcome)
        num = f["commit_num"]
        point = bolt3.commitment_point(self._shaseed(client), num)
        htlcs = [Htlc.from_wire(h) for h in f["htlcs"]]
        built, info = self._rebuild(params, True, num, point, f["tx"], htlcs, f["feerate"], policy)
        digest = crypto.segwit_sighash(built.tx, 0, params.funding_wscript, params.funding_sat, crypto.SIGHASH_ALL)
        ok = crypto.verify_digest(params.peer.funding_pubkey, digest, f["sig"], crypto.SIGHASH_ALL)
        ok = ok and len(f["htlc_sigs"]) == len(built.htlc_outputs)
        for out, sig in zip(built.htlc_outputs, f["htlc_sigs"]):
            htlc_digest = crypto.segwit_sighash(bolt3.build_htlc_tx(built, out), 0, out.wscript, out.htlc.amount_msat // 1000,
                                                crypto.SIGHASH_SINGLE_ANYONECANPAY)
            ok = ok and crypto.verify_digest(built.keys["remote_htlc"], htlc_digest, sig, crypto.SIGHASH_SINGLE_ANYONECANPAY)
        policy.validate_holder_commitment(num, info, ok)
        outcome.logs += [(LOG_UNUSUAL, w) for w in policy.take_warnings()]
        return wire.build("hsmd_validate_commitment_tx_reply", old_commitment_secret=None,
                          next_per_commitment_point=bolt3.commitment_point(self._shaseed(client), num + 1))

    def _revoke_commitment_tx(self, client, f, outcome):
        record = self._channel(client)
        policy = self._policy(record, outcome)
        n = f["commit_num"]
        policy.revoke_holder_commitment(n)
        outcome.logs += [(LOG_UNUSUAL, w) for w in policy.take_warnings()]
        seed = self._shaseed(client)
        return wire.build("hsmd_revoke_commitment_tx_reply", old_commitment_secret=bolt3.commitment_secret(seed, n),
                          next_per_commitment_point=bolt3.commitment_point(seed, n + 2))

    def _validate_revocation(self, client, f, outcome):
        record = self._channel(client)
        policy = self._policy(record, outcome)
        policy.validate_counterparty_revocation(f["revoke_num"], f["per_commitment_secret"])
        outcome.logs += [(LOG_UNUSUAL, w) for w in policy.take_warnings()]
        return wire.build("hsmd_validate_revocation_reply")
