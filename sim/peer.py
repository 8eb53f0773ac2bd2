"""Peer R: the node's counterparty, a library living in the node's process but keeping its own
durable state (``peer.sqlite`` in the data directory), so a crash of the node is not a crash of
R. It holds R's keys, checks and signs the node's commitments, revokes, and adds and fulfils
HTLCs on a seeded schedule. After a reconnect it re-sends the updates the node has not yet
committed and, like R in the write-up, adds a new one.

``AttackerPeer`` colludes with a compromised node: it keeps every signature the node leaks to it
and can later "publish" the stale commitment (fully signed, ready for the chain).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from embit.script import Witness

from . import bolt3, crypto
from .bolt3 import ChannelParams, Party
from .channel_state import ChannelState, Update, UpdateRejected, propose
from .sqlite_kv import JsonKV

PEER_DB = "peer.sqlite"


class PeerError(Exception):
    """R would fail the channel: the node sent something invalid."""


class PeerSecrets:
    def __init__(self, seed: int):
        root = hashlib.sha256(f"hsmproxy-sim-peer:{seed}".encode()).digest()
        label = lambda name: hmac.new(root, name, hashlib.sha256).digest()  # noqa: E731
        self.funding = label(b"funding")
        self.revocation_base = label(b"revocation")
        self.payment_base = label(b"payment")
        self.htlc_base = label(b"htlc")
        self.delayed_base = label(b"delayed")
        self.shaseed = label(b"shaseed")
        self.node_id = crypto.pubkey_of(label(b"node"))

    def party(self) -> Party:
        p = crypto.pubkey_of
        return Party(p(self.funding), p(self.revocation_base), p(self.payment_base), p(self.htlc_base), p(self.delayed_base))

    def point(self, n: int) -> bytes:
        return bolt3.commitment_point(self.shaseed, n)


def params_to_json(p: ChannelParams) -> dict:
    party = lambda x: {k: getattr(x, k).hex() for k in Party.__dataclass_fields__}  # noqa: E731
    return {"node": party(p.node), "peer": party(p.peer), "node_is_opener": p.node_is_opener,
            "funding_txid": p.funding_txid.hex(), "funding_txout": p.funding_txout, "funding_sat": p.funding_sat,
            "node_to_self_delay": p.node_to_self_delay, "peer_to_self_delay": p.peer_to_self_delay,
            "dust_limit_sat": p.dust_limit_sat}


def params_from_json(d: dict) -> ChannelParams:
    party = lambda x: Party(**{k: bytes.fromhex(v) for k, v in x.items()})  # noqa: E731
    return ChannelParams(party(d["node"]), party(d["peer"]), d["node_is_opener"], bytes.fromhex(d["funding_txid"]),
                         d["funding_txout"], d["funding_sat"], d["node_to_self_delay"], d["peer_to_self_delay"], d["dust_limit_sat"])


def htlc_sigs_ok(commitment: bolt3.Commitment, signer_htlc_pubkey: bytes, sigs: list[bytes]) -> bool:
    if len(sigs) != len(commitment.htlc_outputs):
        return False
    for out, sig in zip(commitment.htlc_outputs, sigs):
        digest = crypto.segwit_sighash(bolt3.build_htlc_tx(commitment, out), 0, out.wscript, out.htlc.amount_msat // 1000,
                                       crypto.SIGHASH_SINGLE_ANYONECANPAY)
        if not crypto.verify_digest(signer_htlc_pubkey, digest, sig, crypto.SIGHASH_SINGLE_ANYONECANPAY):
            return False
    return True


def funding_sig_ok(params: ChannelParams, commitment: bolt3.Commitment, pubkey: bytes, sig: bytes) -> bool:
    digest = crypto.segwit_sighash(commitment.tx, 0, params.funding_wscript, params.funding_sat, crypto.SIGHASH_ALL)
    return crypto.verify_digest(pubkey, digest, sig, crypto.SIGHASH_ALL)


class SimPeer:
    FUNDING_SAT = 1_000_000
    PUSH_MSAT = 400_000_000
    TO_SELF_DELAY = 144

    def __init__(self, datadir: Path, seed: int, adds_on_reconnect: bool = True):
        self.kv = JsonKV(datadir / PEER_DB)
        self.seed = seed
        self.keys = PeerSecrets(seed)
        self.adds_on_reconnect = adds_on_reconnect

    # --- durable state ---

    def _get(self, key, default=None):
        return self.kv.get(key, default)

    @property
    def params(self) -> ChannelParams:
        return params_from_json(self._get("params"))

    def _state(self, n: int) -> ChannelState:
        return ChannelState.from_json(self._get(f"state/{n}"))

    @property
    def last_cs_received(self) -> int:
        return self._get("last_cs_received", -1)

    @property
    def node_revoked(self) -> int:
        """The highest node commitment whose revocation R holds (-1: none)."""
        return self._get("node_revoked", -1)

    def _pending(self) -> list[Update]:
        return [Update.from_json(u) for u in self._get("pending", [])]

    # --- channel open ---

    def open(self, node: Party, node_points: dict[int, bytes]) -> dict:
        """accept_channel + funding: R's keys and first points, the funding outpoint and the opening balances."""
        existing = self._get("params")
        party = self.keys.party()
        if existing is None:
            funding_txid = crypto.sha256(b"hsmproxy-sim-funding" + bolt3.funding_script(node.funding_pubkey, party.funding_pubkey)
                                         + str(self.seed).encode())
            params = ChannelParams(node, party, True, funding_txid, 0, self.FUNDING_SAT, self.TO_SELF_DELAY, self.TO_SELF_DELAY)
            state = ChannelState(self.FUNDING_SAT * 1000 - self.PUSH_MSAT, self.PUSH_MSAT)
            self.kv.put_many({"params": params_to_json(params), "state/0": state.to_json(),
                              "node_points": {str(k): v.hex() for k, v in node_points.items()}})
        params = self.params
        return {"peer": params.peer, "funding_txid": params.funding_txid, "funding_txout": params.funding_txout,
                "funding_sat": params.funding_sat, "push_msat": self.PUSH_MSAT, "to_self_delay": self.TO_SELF_DELAY,
                "points": {0: self.keys.point(0), 1: self.keys.point(1)}, "state": self._state(0)}

    def _node_point(self, n: int) -> bytes:
        return bytes.fromhex(self._get("node_points")[str(n)])

    # --- updates ---

    def updates_for_round(self, k: int) -> list[Update]:
        """update_add_htlc / update_fulfill_htlc messages R sends before the node's commitment k:
        everything not yet committed, plus this round's new proposals (made once per round)."""
        pending = self._pending()
        if self._get("proposed_round", 0) < k:
            base = self._state(self.last_cs_received) if self.last_cs_received >= 0 else self._state(0)
            pending += propose(self.seed, False, f"round{k}", base, pending, bolt3_cltv(k))
            self.kv.put_many({"pending": [u.to_json() for u in pending], "proposed_round": k})
        return pending

    def reconnect(self) -> dict:
        """channel_reestablish: what R has, and (as in the write-up) a fresh update on top of the re-sent ones."""
        count = self._get("reconnects", 0) + 1
        pending = self._pending()
        if self.adds_on_reconnect and self.last_cs_received >= 0:
            base = self._state(self.last_cs_received)
            pending += [u for u in propose(self.seed, False, f"reconnect{count}", base, pending, bolt3_cltv(count))
                        if u.kind == "add"]
        self.kv.put_many({"reconnects": count, "pending": [u.to_json() for u in pending]})
        return {"last_cs_received": self.last_cs_received, "node_revoked": self.node_revoked}

    # --- the commitment dance ---

    def commitment_signed(self, k: int, updates: list[Update], sig: bytes, htlc_sigs: list[bytes]) -> None:
        """The node's commitment_signed for R's commitment k (with the update_* that preceded it)."""
        if k <= self.last_cs_received:
            return  # a retransmission of what R already holds
        if k != self.last_cs_received + 1:
            raise PeerError(f"commitment_signed {k} but R last received {self.last_cs_received}")
        pending = self._pending()
        ours = [u for u in updates if not u.by_node]
        pending_uids = {u.uid for u in pending}
        if any(u.uid not in pending_uids for u in ours):
            raise PeerError(f"commitment {k} includes updates R never sent")
        try:
            state = self._state(max(k - 1, 0)).apply(updates)
        except UpdateRejected as exc:
            raise PeerError(f"commitment {k}: {exc}") from None
        params = self.params
        commitment = bolt3.build_commitment(params, False, k, self.keys.point(k), state.to_node_msat, state.to_peer_msat,
                                            state.wire_htlcs(), state.feerate_per_kw)
        if not funding_sig_ok(params, commitment, params.node.funding_pubkey, sig):
            raise PeerError(f"bad signature on R's commitment {k}")
        if not htlc_sigs_ok(commitment, bolt3.derive_pubkey(params.node.htlc_basepoint, self.keys.point(k)), htlc_sigs):
            raise PeerError(f"bad HTLC signature on R's commitment {k}")
        included = {u.uid for u in updates}
        self._on_signed(k, state, sig)
        self.kv.put_many({f"state/{k}": state.to_json(), "last_cs_received": k,
                          f"node_sig/{k}": sig.hex(),
                          "pending": [u.to_json() for u in pending if u.uid not in included]})

    def _on_signed(self, k: int, state: ChannelState, sig: bytes) -> None:
        pass

    def commitment_for_node(self, k: int) -> tuple[bytes, list[bytes]]:
        """R's commitment_signed for the node's commitment k (sent after receiving the node's k)."""
        if k > self.last_cs_received:
            raise PeerError(f"R has not received commitment {k} yet")
        params, state = self.params, self._state(k)
        commitment = bolt3.build_commitment(params, True, k, self._node_point(k), state.to_node_msat, state.to_peer_msat,
                                            state.wire_htlcs(), state.feerate_per_kw)
        digest = crypto.segwit_sighash(commitment.tx, 0, params.funding_wscript, params.funding_sat, crypto.SIGHASH_ALL)
        sig = crypto.sign_digest(self.keys.funding, digest, crypto.SIGHASH_ALL)
        htlc_key = bolt3.derive_privkey(self.keys.htlc_base, self._node_point(k))
        htlc_sigs = []
        for out in commitment.htlc_outputs:
            d = crypto.segwit_sighash(bolt3.build_htlc_tx(commitment, out), 0, out.wscript, out.htlc.amount_msat // 1000,
                                      crypto.SIGHASH_SINGLE_ANYONECANPAY)
            htlc_sigs.append(crypto.sign_digest(htlc_key, d, crypto.SIGHASH_SINGLE_ANYONECANPAY))
        return sig, htlc_sigs

    def revoke_and_ack_for_node(self, n: int) -> tuple[bytes, bytes]:
        """R's revoke_and_ack revoking its commitment n: (secret n, point n+2)."""
        if n + 1 > self.last_cs_received:
            raise PeerError(f"R cannot revoke {n} before it holds commitment {n + 1}")
        return bolt3.commitment_secret(self.keys.shaseed, n), self.keys.point(n + 2)

    def receive_revoke_and_ack(self, n: int, secret: bytes, next_point: bytes) -> None:
        """The node's revoke_and_ack for its commitment n, with its point n+2."""
        if n <= self.node_revoked:
            return
        if n != self.node_revoked + 1:
            raise PeerError(f"node revoked {n} but R expected {self.node_revoked + 1}")
        if crypto.pubkey_of(secret) != self._node_point(n):
            raise PeerError(f"node's revocation secret {n} does not match its point")
        points = self._get("node_points")
        points[str(n + 2)] = next_point.hex()
        self.kv.put_many({"node_revoked": n, "node_points": points})



class AttackerPeer(SimPeer):
    """R colluding with a compromised node: keeps leaked signatures to publish later."""

    def keep_leaked(self, k: int, updates: list[Update], sig: bytes) -> None:
        state = self._state(max(k - 1, 0)).apply(updates)
        leaked = self._get("leaked", [])
        leaked.append({"k": k, "state": state.to_json(), "sig": sig.hex()})
        self.kv.put_many({"leaked": leaked})

    def publishable(self) -> list[dict]:
        """Leaked commitments that differ from what R finally holds at the same index, each fully
        signed (node's leaked sig + R's own) and verified: the theft of the write-up."""
        out = []
        params = self.params
        for item in self._get("leaked", []):
            k, state = item["k"], ChannelState.from_json(item["state"])
            final = self._get(f"state/{k}")
            if final is None or final == item["state"]:
                continue  # no other version of k was signed and committed: nothing to steal
            commitment = bolt3.build_commitment(params, False, k, self.keys.point(k), state.to_node_msat, state.to_peer_msat,
                                                state.wire_htlcs(), state.feerate_per_kw)
            sig = bytes.fromhex(item["sig"])
            if not funding_sig_ok(params, commitment, params.node.funding_pubkey, sig):
                continue
            digest = crypto.segwit_sighash(commitment.tx, 0, params.funding_wscript, params.funding_sat, crypto.SIGHASH_ALL)
            own = crypto.sign_digest(self.keys.funding, digest, crypto.SIGHASH_ALL)
            sigs = {params.node.funding_pubkey: sig, params.peer.funding_pubkey: own}
            k1, k2 = sorted(sigs)
            commitment.tx.vin[0].witness = Witness([b"", crypto.to_der_with_sighash(sigs[k1]),
                                                           crypto.to_der_with_sighash(sigs[k2]), params.funding_wscript])
            out.append({"commit_num": k, "txid": commitment.tx.txid().hex(), "tx": commitment.tx.serialize().hex(),
                        "htlcs": len(state.htlcs), "committed_htlcs": len(final["htlcs"]) if final else None})
        return out


def bolt3_cltv(k: int) -> int:
    return 500 + k
