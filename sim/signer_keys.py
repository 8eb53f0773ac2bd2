"""Key derivation of the simulated signer, from the secret in its working directory.

This is our signer's own scheme (HMAC-SHA256 labels over the secret), not hsmd's: the node
learns every key from the signer's replies and must never assume how they were derived.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from embit.bip32 import HDKey

from .crypto import pubkey_of

SECRET_FILE = "hsm_secret"
TEST_XPUB_VERSION = bytes.fromhex("043587cf")
TEST_XPRV_VERSION = bytes.fromhex("04358394")


def _label(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"hsmproxy-sim/" + b"/".join(parts), hashlib.sha256).digest()


def load_or_create_secret(workdir: Path) -> tuple[bytes, bool]:
    """The signer's root secret: the whole ``hsm_secret`` file (any of hsmd's layouts works,
    we hash all of it). Created (32 random bytes, 0600) when absent, like hsmd does."""
    path = workdir / SECRET_FILE
    if path.exists():
        data = path.read_bytes()
        if len(data) < 32:
            raise ValueError(f"{path}: {len(data)} bytes; an hsm_secret holds at least 32. Remove it to get a new one.")
        return data, False
    data = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data, True


@dataclass(frozen=True)
class ChannelSecrets:
    funding: bytes
    revocation_base: bytes
    payment_base: bytes
    htlc_base: bytes
    delayed_payment_base: bytes
    shaseed: bytes

    @cached_property
    def funding_pubkey(self) -> bytes:
        return pubkey_of(self.funding)

    @cached_property
    def _basepoints(self) -> dict:
        return {"revocation": pubkey_of(self.revocation_base), "payment": pubkey_of(self.payment_base),
                "htlc": pubkey_of(self.htlc_base), "delayed_payment": pubkey_of(self.delayed_payment_base)}

    def basepoints_wire(self) -> dict:
        return dict(self._basepoints)


class NodeKeys:
    def __init__(self, root: bytes):
        self._root = hashlib.sha256(root).digest()
        self.node_secret = _label(self._root, b"node")
        self.node_id = pubkey_of(self.node_secret)
        self.bolt12_pubkey = pubkey_of(_label(self._root, b"bolt12"))
        self._hd = HDKey.from_seed(_label(self._root, b"bip32"), version=TEST_XPRV_VERSION)

    def bip32_ext_key(self) -> bytes:
        """78-byte public serialisation of m/0/0, as hsmd_init_reply_v4 carries it."""
        return self._hd.derive("m/0/0").to_public(version=TEST_XPUB_VERSION).serialize()

    def derive_secret(self, info: bytes) -> bytes:
        return _label(self._root, b"derive", info)

    @lru_cache(maxsize=1024)  # noqa: B019 (one NodeKeys per process)
    def channel(self, peer_id: bytes, dbid: int) -> ChannelSecrets:
        seed = _label(self._root, b"channel", peer_id, dbid.to_bytes(8, "little"))
        parts = [_label(seed, name) for name in (b"funding", b"revocation", b"payment", b"htlc", b"delayed", b"shaseed")]
        return ChannelSecrets(*parts)
