"""secp256k1 and Bitcoin signing primitives the actors share (coincurve + embit underneath).

Signatures travel as hsmd's ``bitcoin_signature``: 64-byte compact r||s plus one sighash byte.
"""

from __future__ import annotations

import hashlib

from coincurve import PrivateKey, PublicKey
from coincurve.ecdsa import cdata_to_der, der_to_cdata, deserialize_compact, serialize_compact
from embit.hashes import ripemd160 as _ripemd160
from embit.script import Script
from embit.transaction import Transaction

SIGHASH_ALL = 0x01
SIGHASH_SINGLE_ANYONECANPAY = 0x83
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ripemd160(data: bytes) -> bytes:
    return _ripemd160(data)


def hash160(data: bytes) -> bytes:
    return ripemd160(sha256(data))


def pubkey_of(secret: bytes) -> bytes:
    """Compressed public key of a 32-byte secret."""
    return PublicKey.from_secret(secret).format(compressed=True)


def add_points(a: bytes, b: bytes) -> bytes:
    return PublicKey.combine_keys([PublicKey(a), PublicKey(b)]).format()


def tweak_point(point: bytes, scalar: bytes) -> bytes:
    """point * scalar."""
    return PublicKey(point).multiply(scalar).format()


def scalar_add(a: bytes, b: bytes) -> bytes:
    return ((int.from_bytes(a, "big") + int.from_bytes(b, "big")) % CURVE_ORDER).to_bytes(32, "big")


def scalar_mul(a: bytes, b: bytes) -> bytes:
    return ((int.from_bytes(a, "big") * int.from_bytes(b, "big")) % CURVE_ORDER).to_bytes(32, "big")


def sign_digest(secret: bytes, digest: bytes, sighash: int) -> bytes:
    """A low-S RFC 6979 signature over a 32-byte digest, as a 65-byte bitcoin_signature."""
    der = PrivateKey(secret).sign(digest, hasher=None)
    return serialize_compact(der_to_cdata(der)) + bytes([sighash])


def verify_digest(pubkey: bytes, digest: bytes, signature: bytes, sighash: int | None = None) -> bool:
    """True when a 65-byte bitcoin_signature (or a 64-byte compact one) signs ``digest``.

    With ``sighash`` given, the signature's sighash byte must equal it."""
    if len(signature) == 65:
        if sighash is not None and signature[64] != sighash:
            return False
        signature = signature[:64]
    if len(signature) != 64:
        return False
    try:
        der = cdata_to_der(deserialize_compact(signature))
        return PublicKey(pubkey).verify(der, digest, hasher=None)
    except (ValueError, TypeError):
        return False


def segwit_sighash(tx: Transaction, input_index: int, witness_script: bytes, value_sat: int, sighash: int) -> bytes:
    """BIP143 signature hash of a P2WSH input."""
    return tx.sighash_segwit(input_index, Script(witness_script), value_sat, sighash=sighash)


def to_der_with_sighash(signature: bytes) -> bytes:
    """A 65-byte bitcoin_signature as a witness item: DER plus the sighash byte."""
    return cdata_to_der(deserialize_compact(signature[:64])) + signature[64:65]
