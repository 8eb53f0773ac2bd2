"""Commitment digests: one 32-byte fingerprint of what a validating signer compares on a retry.

VLS's retry-same rule compares the remote per-commitment point, the HTLC set, the feerate and
the transaction it rebuilds (output values and scripts). The digest covers exactly those, so two
requests for one index with equal digests are the same commitment, and different digests are
the split-brain. Signatures, witnesses and input details are left out on purpose: they do not
change what the commitment pays to whom.
"""

from __future__ import annotations

import hashlib
import struct

_DOMAIN = b"hsmproxy/commitment-digest/v1"


class TxParseError(ValueError):
    """The commitment transaction bytes are not a parseable bitcoin transaction."""


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(raw):
        raise TxParseError(f"transaction truncated at byte {pos} (expected a varint)")
    first = raw[pos]
    if first < 0xFD:
        return first, pos + 1
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    if pos + 1 + width > len(raw):
        raise TxParseError(f"transaction truncated at byte {pos} (varint of {width} bytes)")
    return int.from_bytes(raw[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


def tx_outputs(raw: bytes) -> list[tuple[int, bytes]]:
    """The (value in satoshi, scriptPubKey) of every output of a raw (segwit or legacy) tx."""
    if len(raw) < 10:
        raise TxParseError(f"transaction of {len(raw)} bytes is too short")
    pos = 4  # version
    if raw[pos] == 0 and raw[pos + 1] == 1:  # segwit marker and flag
        pos += 2
    n_inputs, pos = _varint(raw, pos)
    for _ in range(n_inputs):
        pos += 36  # prevout txid + vout
        script_len, pos = _varint(raw, pos)
        pos += script_len + 4  # scriptSig + sequence
    n_outputs, pos = _varint(raw, pos)
    outputs = []
    for _ in range(n_outputs):
        if pos + 8 > len(raw):
            raise TxParseError(f"transaction truncated in output {len(outputs)}")
        value = int.from_bytes(raw[pos : pos + 8], "little")
        script_len, pos = _varint(raw, pos + 8)
        if pos + script_len > len(raw):
            raise TxParseError(f"transaction truncated in the script of output {len(outputs)}")
        outputs.append((value, raw[pos : pos + script_len]))
        pos += script_len
    return outputs


def funding_outpoint(raw: bytes) -> bytes:
    """The first input's prevout (txid + vout, 36 bytes): for a commitment, the funding outpoint.

    A splice in flight makes channeld sign the same commitment index once per funding
    candidate; the outpoint tells those apart from a changed retry."""
    pos = 4
    if len(raw) > 6 and raw[pos] == 0 and raw[pos + 1] == 1:
        pos += 2
    n_inputs, pos = _varint(raw, pos)
    if n_inputs < 1 or pos + 36 > len(raw):
        raise TxParseError("transaction has no complete input")
    return raw[pos : pos + 36]


def commitment_digest(
    raw_tx: bytes,
    htlcs: list[dict],
    feerate: int,
    remote_per_commitment_point: bytes | None,
) -> bytes:
    """sha256 over the point, the sorted HTLC set, the feerate and the tx outputs, in that order."""
    h = hashlib.sha256(_DOMAIN)
    point = remote_per_commitment_point or b""
    h.update(bytes([len(point)]) + point)
    h.update(struct.pack(">I", feerate))
    # The HTLC set is a multiset: the node may list it in any order.
    encoded = sorted(
        struct.pack(">BQ", htlc["side"], htlc["amount"]) + htlc["payment_hash"] + struct.pack(">I", htlc["cltv_expiry"])
        for htlc in htlcs
    )
    h.update(struct.pack(">I", len(encoded)))
    for item in encoded:
        h.update(item)
    outputs = tx_outputs(raw_tx)
    h.update(struct.pack(">I", len(outputs)))
    for value, script in outputs:
        h.update(struct.pack(">QI", value, len(script)) + script)
    return h.digest()


def digest_of_request(fields: dict, with_point: bool) -> bytes:
    """The digest of a decoded sign_remote_commitment_tx (with_point) or validate_commitment_tx."""
    point = fields.get("remote_per_commit") if with_point else None
    return commitment_digest(fields["tx"]["tx"], fields["htlcs"], fields["feerate"], point)
