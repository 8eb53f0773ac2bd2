"""Client permission bits (hsmd/permissions.h) and which requests each allows (reference §5.4).

Protocol knowledge shared by everything that plays or checks a signer: the simulated signer,
the test signer, and the proxy's guard.
"""

from __future__ import annotations

from .codec import ALL_SPECS

ECDH = 1
SIGN_GOSSIP = 2
SIGN_ONCHAIN_TX = 4
COMMITMENT_POINT = 8
SIGN_REMOTE_TX = 16
SIGN_CLOSING_TX = 32
SIGN_WILL_FUND_OFFER = 64
SIGN_SPLICE_TX = 128
LOCK_OUTPOINT = 256
MASTER = 1024  # bit 512 is unused

# lightningd's own request socket (fd 3) implicitly has these.
MASTER_SOCKET = MASTER | SIGN_GOSSIP | ECDH
# What lightningd asks for when it creates each subdaemon's client fd.
CONNECTD = ECDH
CHANNELD = SIGN_GOSSIP | ECDH | COMMITMENT_POINT | SIGN_REMOTE_TX | SIGN_ONCHAIN_TX | SIGN_CLOSING_TX \
    | SIGN_SPLICE_TX | LOCK_OUTPOINT
OPENINGD = COMMITMENT_POINT | SIGN_REMOTE_TX
DUALOPEND = COMMITMENT_POINT | SIGN_REMOTE_TX | SIGN_WILL_FUND_OFFER | LOCK_OUTPOINT
CLOSINGD = SIGN_CLOSING_TX | COMMITMENT_POINT
ONCHAIND = SIGN_ONCHAIN_TX | COMMITMENT_POINT

# Request number -> the bit it needs; every other request needs MASTER.
REQUIRED: dict[int, int] = {
    1: ECDH,
    2: SIGN_GOSSIP, 3: SIGN_GOSSIP, 6: SIGN_GOSSIP,
    12: SIGN_ONCHAIN_TX, 13: SIGN_ONCHAIN_TX, 14: SIGN_ONCHAIN_TX,
    18: COMMITMENT_POINT, 22: COMMITMENT_POINT, 31: COMMITMENT_POINT,
    19: SIGN_REMOTE_TX, 20: SIGN_REMOTE_TX, 35: SIGN_REMOTE_TX, 36: SIGN_REMOTE_TX, 40: SIGN_REMOTE_TX,
    21: SIGN_CLOSING_TX,
    26: SIGN_WILL_FUND_OFFER,
    29: SIGN_SPLICE_TX,
    32: LOCK_OUTPOINT, 37: LOCK_OUTPOINT,
}

_REPLY_SUFFIXES = ("_reply", "_resp", "_reply_v4", "_reply_failure")
REQUEST_TYPES: frozenset[int] = frozenset(
    s.type for s in ALL_SPECS if s.name.startswith("hsmd_") and not s.name.endswith(_REPLY_SUFFIXES)
)


def required(msg_type: int) -> int:
    return REQUIRED.get(msg_type, MASTER)


def allows(permissions: int, msg_type: int) -> bool:
    """Whether a client holding ``permissions`` may send ``msg_type`` (replies never)."""
    return msg_type in REQUEST_TYPES and bool(permissions & required(msg_type))
