"""BOLT 3 for anchor channels (option_anchors_zero_fee_htlc_tx + static_remotekey), sans-IO.

Per-commitment secrets and their compact store, key derivation, scripts, and the commitment
and HTLC transactions, built with embit. Indices are Core Lightning's commitment numbers, which
count up from 0; BOLT 3's secret index is ``2**48 - 1 - n``.

"local"/"remote" in script names are relative to the broadcaster of that commitment, as in the
spec: the broadcaster is the holder of the commitment, the countersignatory its peer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from .crypto import add_points, hash160, pubkey_of, ripemd160, scalar_add, scalar_mul, sha256, tweak_point

MAX_INDEX = 2**48 - 1
ANCHOR_SAT = 330
BASE_COMMITMENT_WEIGHT = 1124  # anchors
HTLC_OUTPUT_WEIGHT = 172
HTLC_SEQUENCE = 1  # anchors: HTLC spends are CSV 1


# --- per-commitment secrets -------------------------------------------------------------


def generate_from_seed(seed: bytes, index: int) -> bytes:
    """BOLT 3 'generate_from_seed': the secret at 48-bit ``index`` of the shachain."""
    p = bytearray(seed)
    for b in range(47, -1, -1):
        if (index >> b) & 1:
            p[b // 8] ^= 1 << (b % 8)
            p = bytearray(sha256(bytes(p)))
    return bytes(p)


def commitment_secret(seed: bytes, commit_num: int) -> bytes:
    """The per-commitment secret of Core Lightning's commitment number ``commit_num``."""
    return generate_from_seed(seed, MAX_INDEX - commit_num)


def commitment_point(seed: bytes, commit_num: int) -> bytes:
    return pubkey_of(commitment_secret(seed, commit_num))


def _derive_from(base_secret: bytes, index_bits: int, index: int) -> bytes:
    p = bytearray(base_secret)
    for b in range(index_bits - 1, -1, -1):
        if (index >> b) & 1:
            p[b // 8] ^= 1 << (b % 8)
            p = bytearray(sha256(bytes(p)))
    return bytes(p)


class ShachainError(ValueError):
    pass


class SecretStore:
    """BOLT 3's compact storage of received per-commitment secrets (at most 49 entries).

    Insert in order (commit_num 0, 1, 2, ...). A secret that does not chain into the ones
    already held raises ShachainError: the peer lied about an earlier secret."""

    def __init__(self, known: list[tuple[int, bytes] | None] | None = None):
        self.known: list[tuple[int, bytes] | None] = list(known) if known else [None] * 49

    @staticmethod
    def _position(index: int) -> int:
        for b in range(48):
            if (index >> b) & 1:
                return b
        return 48

    def insert(self, commit_num: int, secret: bytes) -> None:
        index = MAX_INDEX - commit_num
        pos = self._position(index)
        for i in range(pos):
            entry = self.known[i]
            if entry is None:
                continue
            if _derive_from(secret, pos, entry[0]) != entry[1]:
                raise ShachainError(f"secret for commitment {commit_num} does not derive the one held for index {entry[0]}")
        self.known[pos] = (index, secret)

    def get(self, commit_num: int) -> bytes | None:
        index = MAX_INDEX - commit_num
        for i, entry in enumerate(self.known):
            if entry is None:
                continue
            mask = ~((1 << i) - 1) & MAX_INDEX
            if index & mask == entry[0] & mask:
                return _derive_from(entry[1], i, index)
        return None

    def to_json(self) -> list:
        return [None if e is None else [e[0], e[1].hex()] for e in self.known]

    @classmethod
    def from_json(cls, data: list) -> "SecretStore":
        return cls([None if e is None else (e[0], bytes.fromhex(e[1])) for e in data])


# --- key derivation ---------------------------------------------------------------------


def derive_pubkey(basepoint: bytes, per_commitment_point: bytes) -> bytes:
    """basepoint + SHA256(per_commitment_point || basepoint) * G."""
    return add_points(basepoint, pubkey_of(sha256(per_commitment_point + basepoint)))


def derive_privkey(base_secret: bytes, per_commitment_point: bytes) -> bytes:
    basepoint = pubkey_of(base_secret)
    return scalar_add(base_secret, sha256(per_commitment_point + basepoint))


def derive_revocation_pubkey(revocation_basepoint: bytes, per_commitment_point: bytes) -> bytes:
    a = tweak_point(revocation_basepoint, sha256(revocation_basepoint + per_commitment_point))
    b = tweak_point(per_commitment_point, sha256(per_commitment_point + revocation_basepoint))
    return add_points(a, b)


def derive_revocation_privkey(revocation_base_secret: bytes, per_commitment_secret: bytes) -> bytes:
    rb = pubkey_of(revocation_base_secret)
    pcp = pubkey_of(per_commitment_secret)
    return scalar_add(
        scalar_mul(revocation_base_secret, sha256(rb + pcp)),
        scalar_mul(per_commitment_secret, sha256(pcp + rb)),
    )


def obscuring_factor(opener_payment_basepoint: bytes, accepter_payment_basepoint: bytes) -> int:
    return int.from_bytes(sha256(opener_payment_basepoint + accepter_payment_basepoint)[-6:], "big")


# --- scripts ----------------------------------------------------------------------------

OP_0, OP_1, OP_2, OP_16 = 0x00, 0x51, 0x52, 0x60
OP_IF, OP_NOTIF, OP_ELSE, OP_ENDIF = 0x63, 0x64, 0x67, 0x68
OP_DROP, OP_DUP, OP_IFDUP, OP_SWAP, OP_SIZE = 0x75, 0x76, 0x73, 0x7C, 0x82
OP_EQUAL, OP_EQUALVERIFY, OP_HASH160 = 0x87, 0x88, 0xA9
OP_CHECKSIG, OP_CHECKSIGVERIFY, OP_CHECKMULTISIG = 0xAC, 0xAD, 0xAE
OP_CLTV, OP_CSV = 0xB1, 0xB2


def _push(data: bytes) -> bytes:
    assert len(data) < 76
    return bytes([len(data)]) + data


def _num(n: int) -> bytes:
    """Minimal script number push (n >= 0)."""
    if n == 0:
        return bytes([OP_0])
    if 1 <= n <= 16:
        return bytes([OP_1 + n - 1])
    out = bytearray()
    while n:
        out.append(n & 0xFF)
        n >>= 8
    if out[-1] & 0x80:
        out.append(0)
    return _push(bytes(out))


def funding_script(pubkey_a: bytes, pubkey_b: bytes) -> bytes:
    k1, k2 = sorted([pubkey_a, pubkey_b])
    return bytes([OP_2]) + _push(k1) + _push(k2) + bytes([OP_2, OP_CHECKMULTISIG])


def to_local_script(revocation_pubkey: bytes, to_self_delay: int, delayed_pubkey: bytes) -> bytes:
    return (
        bytes([OP_IF]) + _push(revocation_pubkey) + bytes([OP_ELSE]) + _num(to_self_delay)
        + bytes([OP_CSV, OP_DROP]) + _push(delayed_pubkey) + bytes([OP_ENDIF, OP_CHECKSIG])
    )


def to_remote_anchor_script(remote_pubkey: bytes) -> bytes:
    return _push(remote_pubkey) + bytes([OP_CHECKSIGVERIFY, OP_1, OP_CSV])


def anchor_script(funding_pubkey: bytes) -> bytes:
    return _push(funding_pubkey) + bytes([OP_CHECKSIG, OP_IFDUP, OP_NOTIF, OP_16, OP_CSV, OP_ENDIF])


def offered_htlc_script(revocation_pubkey: bytes, local_htlc_pubkey: bytes, remote_htlc_pubkey: bytes, payment_hash: bytes) -> bytes:
    return (
        bytes([OP_DUP, OP_HASH160]) + _push(hash160(revocation_pubkey)) + bytes([OP_EQUAL, OP_IF, OP_CHECKSIG, OP_ELSE])
        + _push(remote_htlc_pubkey) + bytes([OP_SWAP, OP_SIZE]) + _push(b"\x20") + bytes([OP_EQUAL, OP_NOTIF, OP_DROP, OP_2, OP_SWAP])
        + _push(local_htlc_pubkey) + bytes([OP_2, OP_CHECKMULTISIG, OP_ELSE, OP_HASH160]) + _push(ripemd160(payment_hash))
        + bytes([OP_EQUALVERIFY, OP_CHECKSIG, OP_ENDIF, OP_1, OP_CSV, OP_DROP, OP_ENDIF])
    )


def received_htlc_script(revocation_pubkey: bytes, local_htlc_pubkey: bytes, remote_htlc_pubkey: bytes, payment_hash: bytes, cltv_expiry: int) -> bytes:
    return (
        bytes([OP_DUP, OP_HASH160]) + _push(hash160(revocation_pubkey)) + bytes([OP_EQUAL, OP_IF, OP_CHECKSIG, OP_ELSE])
        + _push(remote_htlc_pubkey) + bytes([OP_SWAP, OP_SIZE]) + _push(b"\x20") + bytes([OP_EQUAL, OP_IF, OP_HASH160])
        + _push(ripemd160(payment_hash)) + bytes([OP_EQUALVERIFY, OP_2, OP_SWAP]) + _push(local_htlc_pubkey)
        + bytes([OP_2, OP_CHECKMULTISIG, OP_ELSE, OP_DROP]) + _num(cltv_expiry)
        + bytes([OP_CLTV, OP_DROP, OP_CHECKSIG, OP_ENDIF, OP_1, OP_CSV, OP_DROP, OP_ENDIF])
    )


def p2wsh(script: bytes) -> bytes:
    return b"\x00\x20" + sha256(script)


# --- transactions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Htlc:
    """An HTLC as hsmd's hsm_htlc carries it; ``offered_by_holder`` is from the signer's node's side
    (hsm_htlc side 0 = LOCAL = offered by the node)."""

    offered_by_node: bool
    amount_msat: int
    payment_hash: bytes
    cltv_expiry: int

    def to_wire(self) -> dict:
        return {"side": 0 if self.offered_by_node else 1, "amount": self.amount_msat,
                "payment_hash": self.payment_hash, "cltv_expiry": self.cltv_expiry}

    @classmethod
    def from_wire(cls, h: dict) -> "Htlc":
        return cls(h["side"] == 0, h["amount"], h["payment_hash"], h["cltv_expiry"])


@dataclass(frozen=True)
class Party:
    """One side's public channel keys."""

    funding_pubkey: bytes
    revocation_basepoint: bytes
    payment_basepoint: bytes
    htlc_basepoint: bytes
    delayed_payment_basepoint: bytes

    @classmethod
    def from_wire(cls, basepoints: dict, funding_pubkey: bytes) -> "Party":
        return cls(funding_pubkey, basepoints["revocation"], basepoints["payment"], basepoints["htlc"], basepoints["delayed_payment"])

    def basepoints_wire(self) -> dict:
        return {"revocation": self.revocation_basepoint, "payment": self.payment_basepoint,
                "htlc": self.htlc_basepoint, "delayed_payment": self.delayed_payment_basepoint}


@dataclass(frozen=True)
class ChannelParams:
    """What both sides agreed at open. ``node`` is the signer's node, ``peer`` its counterparty."""

    node: Party
    peer: Party
    node_is_opener: bool
    funding_txid: bytes  # internal byte order, as hsmd carries it
    funding_txout: int
    funding_sat: int
    # Delay each side's own to_local carries (chosen by the other side).
    node_to_self_delay: int
    peer_to_self_delay: int
    dust_limit_sat: int = 546

    @property
    def funding_wscript(self) -> bytes:
        return funding_script(self.node.funding_pubkey, self.peer.funding_pubkey)

    @property
    def obscurer(self) -> int:
        opener, accepter = (self.node, self.peer) if self.node_is_opener else (self.peer, self.node)
        return obscuring_factor(opener.payment_basepoint, accepter.payment_basepoint)


@dataclass
class HtlcOutput:
    htlc: Htlc
    output_index: int
    wscript: bytes
    offered_by_broadcaster: bool


@dataclass
class Commitment:
    tx: Transaction
    htlc_outputs: list[HtlcOutput] = field(default_factory=list)  # in output order
    to_broadcaster_sat: int = 0
    to_countersigner_sat: int = 0
    keys: dict = field(default_factory=dict)


def commitment_fee_sat(feerate_per_kw: int, untrimmed_htlcs: int) -> int:
    return feerate_per_kw * (BASE_COMMITMENT_WEIGHT + HTLC_OUTPUT_WEIGHT * untrimmed_htlcs) // 1000


def build_commitment(
    params: ChannelParams,
    node_is_broadcaster: bool,
    commit_num: int,
    per_commitment_point: bytes,
    to_node_msat: int,
    to_peer_msat: int,
    htlcs: list[Htlc],
    feerate_per_kw: int,
) -> Commitment:
    """The BOLT 3 anchor commitment transaction ``commit_num`` held by the broadcaster.

    ``to_node_msat``/``to_peer_msat`` are the balances before fees and anchors; the opener pays
    both, as BOLT 3 says."""
    untrimmed = sum(1 for h in htlcs if h.amount_msat // 1000 >= params.dust_limit_sat)
    fee = commitment_fee_sat(feerate_per_kw, untrimmed) + 2 * ANCHOR_SAT
    to_broadcaster_msat, to_countersigner_msat = (to_node_msat, to_peer_msat) if node_is_broadcaster else (to_peer_msat, to_node_msat)
    if node_is_broadcaster == params.node_is_opener:
        to_broadcaster_msat -= fee * 1000
    else:
        to_countersigner_msat -= fee * 1000
    if min(to_broadcaster_msat, to_countersigner_msat) < 0:
        raise ValueError("the opener cannot pay the commitment fee and anchors")
    return assemble_commitment(params, node_is_broadcaster, commit_num, per_commitment_point,
                               to_broadcaster_msat // 1000, to_countersigner_msat // 1000, htlcs)


def output_scripts(params: ChannelParams, node_is_broadcaster: bool, per_commitment_point: bytes) -> dict:
    """The keys of one commitment and the scriptPubKeys of its to_local and to_remote outputs."""
    broadcaster, countersigner = (params.node, params.peer) if node_is_broadcaster else (params.peer, params.node)
    pcp = per_commitment_point
    keys = {
        "revocation": derive_revocation_pubkey(countersigner.revocation_basepoint, pcp),
        "delayed": derive_pubkey(broadcaster.delayed_payment_basepoint, pcp),
        "local_htlc": derive_pubkey(broadcaster.htlc_basepoint, pcp),
        "remote_htlc": derive_pubkey(countersigner.htlc_basepoint, pcp),
        "delay": params.node_to_self_delay if node_is_broadcaster else params.peer_to_self_delay,
    }
    keys["to_local_spk"] = p2wsh(to_local_script(keys["revocation"], keys["delay"], keys["delayed"]))
    keys["to_remote_spk"] = p2wsh(to_remote_anchor_script(countersigner.payment_basepoint))  # static_remotekey
    return keys


def assemble_commitment(
    params: ChannelParams,
    node_is_broadcaster: bool,
    commit_num: int,
    per_commitment_point: bytes,
    to_broadcaster_sat: int,
    to_countersigner_sat: int,
    htlcs: list[Htlc],
) -> Commitment:
    """The commitment from its post-fee output values (what a signer reads off a tx to rebuild it)."""
    broadcaster, countersigner = (params.node, params.peer) if node_is_broadcaster else (params.peer, params.node)
    keys = output_scripts(params, node_is_broadcaster, per_commitment_point)
    untrimmed = []
    for h in htlcs:
        if h.amount_msat // 1000 >= params.dust_limit_sat:  # zero-fee HTLC txs: no fee in the trim
            offered = h.offered_by_node == node_is_broadcaster
            script = (offered_htlc_script(keys["revocation"], keys["local_htlc"], keys["remote_htlc"], h.payment_hash) if offered
                      else received_htlc_script(keys["revocation"], keys["local_htlc"], keys["remote_htlc"], h.payment_hash, h.cltv_expiry))
            untrimmed.append((h, offered, script))

    # (value, scriptPubKey, cltv for BIP69 ties, tag)
    outputs: list[tuple[int, bytes, int, object]] = []
    has_local = to_broadcaster_sat >= params.dust_limit_sat
    has_remote = to_countersigner_sat >= params.dust_limit_sat
    if has_local:
        outputs.append((to_broadcaster_sat, keys["to_local_spk"], 0, "to_local"))
    if has_remote:
        outputs.append((to_countersigner_sat, keys["to_remote_spk"], 0, "to_remote"))
    if has_local or untrimmed:
        outputs.append((ANCHOR_SAT, p2wsh(anchor_script(broadcaster.funding_pubkey)), 0, "anchor"))
    if has_remote or untrimmed:
        outputs.append((ANCHOR_SAT, p2wsh(anchor_script(countersigner.funding_pubkey)), 0, "anchor"))
    for h, offered, script in untrimmed:
        outputs.append((h.amount_msat // 1000, p2wsh(script), h.cltv_expiry, (h, offered, script)))
    outputs.sort(key=lambda o: (o[0], o[1], o[2]))

    obscured = (commit_num ^ params.obscurer) & MAX_INDEX
    vin = [TransactionInput(params.funding_txid[::-1], params.funding_txout, sequence=(0x80 << 24) | (obscured >> 24))]
    vout = [TransactionOutput(value, Script(spk)) for value, spk, _, _ in outputs]
    tx = Transaction(version=2, vin=vin, vout=vout, locktime=(0x20 << 24) | (obscured & 0xFFFFFF))
    htlc_outputs = [HtlcOutput(tag[0], i, tag[2], tag[1]) for i, (_, _, _, tag) in enumerate(outputs) if isinstance(tag, tuple)]
    return Commitment(tx, htlc_outputs, to_broadcaster_sat if has_local else 0, to_countersigner_sat if has_remote else 0, keys)


def output_values(tx: Transaction, keys: dict) -> tuple[int, int]:
    """(to_broadcaster_sat, to_countersigner_sat) read off a commitment tx; 0 when trimmed."""
    local = sum(o.value for o in tx.vout if o.script_pubkey.data == keys["to_local_spk"])
    remote = sum(o.value for o in tx.vout if o.script_pubkey.data == keys["to_remote_spk"])
    return local, remote


def build_htlc_tx(commitment: Commitment, out: HtlcOutput) -> Transaction:
    """The HTLC-timeout (offered) or HTLC-success (received) tx spending one HTLC output.
    Zero-fee anchors: the output keeps the whole HTLC amount."""
    keys = commitment.keys
    spk = p2wsh(to_local_script(keys["revocation"], keys["delay"], keys["delayed"]))
    vin = [TransactionInput(commitment.tx.txid(), out.output_index, sequence=HTLC_SEQUENCE)]
    vout = [TransactionOutput(out.htlc.amount_msat // 1000, Script(spk))]
    return Transaction(version=2, vin=vin, vout=vout, locktime=out.htlc.cltv_expiry if out.offered_by_broadcaster else 0)
