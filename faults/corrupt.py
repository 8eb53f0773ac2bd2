"""Well-formed but wrong values for the corrupt action (pure functions, no IO).

``wrong_signatures`` swaps every signature in a message for a real, valid-looking signature by
another key over another digest: it parses, it is low-S and canonical, and it does not verify.
That reaches the validation paths of the node (a bad signature from the signer) or of the signer
(a bad counterparty signature in ``hsmd_validate_commitment_tx``), which bit flips rarely do.
"""

from __future__ import annotations

import hashlib

import coincurve

import wire

SIGNATURE_TYPES = (
    "bitcoin_signature",
    "secp256k1_ecdsa_signature",
    "secp256k1_ecdsa_recoverable_signature",
    "bip340sig",
)


def _forged(type_name: str, original: bytes, key: coincurve.PrivateKey, index: int) -> bytes:
    digest = hashlib.sha256(b"hsmproxy wrong-sig|%d|" % index + original).digest()
    if type_name == "bip340sig":
        return key.sign_schnorr(digest)
    recoverable = key.sign_recoverable(digest, hasher=None)  # r || s || recid, s already low
    if type_name == "secp256k1_ecdsa_recoverable_signature":
        return recoverable
    if type_name == "bitcoin_signature":
        return recoverable[:64] + original[64:65]  # keep the sighash byte: only the signature is wrong
    return recoverable[:64]


def wrong_signatures(msg: wire.Message, key_material: bytes) -> bytes | None:
    """The message re-encoded with every signature field forged; None when it has none."""
    if msg.spec is None:
        return None
    key = coincurve.PrivateKey(hashlib.sha256(b"hsmproxy wrong-sig key|" + key_material).digest())
    fields = dict(msg.fields)
    changed = 0
    for spec in msg.spec.fields:
        type_name = spec.type_name.lstrip("?")
        value = fields.get(spec.name)
        if type_name not in SIGNATURE_TYPES or value is None:
            continue
        if isinstance(value, list):
            fields[spec.name] = [_forged(type_name, v, key, changed + i) for i, v in enumerate(value)]
            changed += len(value)
        else:
            fields[spec.name] = _forged(type_name, value, key, changed)
            changed += 1
    if not changed:
        return None
    forged = wire.Message(msg.type, msg.name, fields, msg.trailing, msg.spec)
    return wire.encode(forged)
