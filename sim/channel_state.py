"""The channel as both simulated actors see it, sans-IO: balances, HTLCs and the updates that
change them (add and fulfil), plus the seeded schedule that proposes updates.

A commitment round k applies one list of updates to the state of round k-1; both sides check
every update, so a peer cannot credit itself or fulfil with a wrong preimage. A side's updates
never depend on the other side's (own balance, own HTLC count, fulfils of HTLCs offered to it),
so updates deferred to a later commitment stay valid."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from .bolt3 import Htlc
from .crypto import sha256

MAX_HTLCS_PER_SIDE = 5  # max_accepted_htlcs: each side's limit only counts its own offers
NODE_RESERVE_MSAT = 60_000_000  # the opener also pays fees and anchors
PEER_RESERVE_MSAT = 10_000_000


class UpdateRejected(ValueError):
    pass


@dataclass(frozen=True)
class Update:
    """``kind`` "add" (an HTLC offered by ``by_node`` side) or "fulfill" (by the HTLC's receiver)."""

    kind: str
    uid: str
    by_node: bool
    amount_msat: int = 0
    payment_hash: str = ""
    cltv_expiry: int = 0
    preimage: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Update":
        return cls(**d)


@dataclass
class HtlcEntry:
    uid: str
    offered_by_node: bool
    amount_msat: int
    payment_hash: str
    cltv_expiry: int

    def to_htlc(self) -> Htlc:
        return Htlc(self.offered_by_node, self.amount_msat, bytes.fromhex(self.payment_hash), self.cltv_expiry)


@dataclass
class ChannelState:
    to_node_msat: int
    to_peer_msat: int
    feerate_per_kw: int = 253
    htlcs: list[HtlcEntry] = field(default_factory=list)

    def copy(self) -> "ChannelState":
        return ChannelState.from_json(self.to_json())

    def to_json(self) -> dict:
        return {"to_node_msat": self.to_node_msat, "to_peer_msat": self.to_peer_msat,
                "feerate_per_kw": self.feerate_per_kw, "htlcs": [asdict(h) for h in self.htlcs]}

    @classmethod
    def from_json(cls, d: dict) -> "ChannelState":
        return cls(d["to_node_msat"], d["to_peer_msat"], d["feerate_per_kw"], [HtlcEntry(**h) for h in d["htlcs"]])

    def wire_htlcs(self) -> list[Htlc]:
        return [h.to_htlc() for h in self.htlcs]

    def find(self, uid: str) -> HtlcEntry | None:
        return next((h for h in self.htlcs if h.uid == uid), None)

    def apply(self, updates: list[Update]) -> "ChannelState":
        """The state after ``updates``; raises UpdateRejected naming the bad update."""
        s = self.copy()
        for u in updates:
            if u.kind == "add":
                offered = sum(1 for h in s.htlcs if h.offered_by_node == u.by_node)
                if s.find(u.uid) or offered >= MAX_HTLCS_PER_SIDE or u.amount_msat <= 0:
                    raise UpdateRejected(f"add {u.uid}: duplicate, too many HTLCs or bad amount")
                if u.by_node:
                    if s.to_node_msat - u.amount_msat < NODE_RESERVE_MSAT:
                        raise UpdateRejected(f"add {u.uid}: node balance too low")
                    s.to_node_msat -= u.amount_msat
                else:
                    if s.to_peer_msat - u.amount_msat < PEER_RESERVE_MSAT:
                        raise UpdateRejected(f"add {u.uid}: peer balance too low")
                    s.to_peer_msat -= u.amount_msat
                s.htlcs.append(HtlcEntry(u.uid, u.by_node, u.amount_msat, u.payment_hash, u.cltv_expiry))
            elif u.kind == "fulfill":
                h = s.find(u.uid)
                if h is None or h.offered_by_node == u.by_node:
                    raise UpdateRejected(f"fulfill {u.uid}: no such HTLC offered to the fulfiller")
                if sha256(bytes.fromhex(u.preimage)).hex() != h.payment_hash:
                    raise UpdateRejected(f"fulfill {u.uid}: preimage does not match the payment hash")
                s.htlcs.remove(h)
                if u.by_node:
                    s.to_node_msat += h.amount_msat
                else:
                    s.to_peer_msat += h.amount_msat
            else:
                raise UpdateRejected(f"unknown update kind {u.kind!r}")
        return s


def preimage_for(seed: int, uid: str) -> bytes:
    """Both actors derive preimages from the schedule seed, so the receiver can fulfil."""
    return sha256(f"hsmproxy-sim-preimage:{seed}:{uid}".encode())


def propose(seed: int, by_node: bool, label: str, state: ChannelState, pending: list[Update], cltv: int) -> list[Update]:
    """The updates one side proposes at one step of the schedule (``label`` makes it unique).

    Adds an HTLC (sometimes below dust, so trimming is exercised) and fulfils one HTLC it received,
    each with some probability, always staying valid on top of ``state`` plus ``pending``."""
    rng = random.Random(f"{seed}:{'node' if by_node else 'peer'}:{label}")
    out: list[Update] = []
    projected = state.apply(pending)
    received = [h for h in projected.htlcs if h.offered_by_node != by_node]
    if received and rng.random() < 0.6:
        h = rng.choice(received)
        out.append(Update("fulfill", h.uid, by_node, preimage=preimage_for(seed, h.uid).hex()))
    if rng.random() < 0.7:
        uid = f"{'a' if by_node else 'r'}-{label}"
        amount = rng.choice([300_000, 2_000_000, 5_000_000, 20_000_000]) + rng.randrange(1000)
        add = Update("add", uid, by_node, amount, sha256(preimage_for(seed, uid)).hex(), cltv)
        try:
            projected.apply(out + [add])
            out.append(add)
        except UpdateRejected:
            pass
    return out
