"""Every request belongs to exactly one family; replies and status messages to none."""

import wire
from wire.families import FAMILIES, FAMILY_OF_REQUEST, family_of

REPLY_OR_STATUS = ("_reply", "_resp", "_reply_v4", "_reply_failure")


def test_every_request_has_a_family():
    requests = [
        name for name in wire.SPECS_BY_NAME
        if not name.endswith(REPLY_OR_STATUS) and not name.startswith(("status_", "hsmstatus_"))
    ]
    assert len(requests) >= 40
    assert sorted(requests) == sorted(FAMILY_OF_REQUEST)


def test_unknown_and_replies_are_unknown():
    assert family_of(None) == "unknown"
    assert family_of("hsmd_sign_tx_reply") == "unknown"
    assert family_of("hsmd_sign_remote_commitment_tx") == "commitment"
    assert set(FAMILY_OF_REQUEST.values()) | {"unknown"} == set(FAMILIES)


def test_permissions_match_the_reference():
    from wire import permissions as p

    assert p.CHANNELD == 0x1BF and p.OPENINGD == 0x18 and p.DUALOPEND == 0x158
    assert p.CLOSINGD == 0x28 and p.ONCHAIND == 0x0C and p.MASTER_SOCKET == 0x403
    assert p.allows(p.CHANNELD, 19) and p.allows(p.CHANNELD, 40)
    assert not p.allows(p.CHANNELD, 5)  # sign_commitment_tx needs MASTER
    assert not p.allows(p.MASTER_SOCKET, 18)  # the master asking for a point is fatal in hsmd
    assert p.allows(p.MASTER_SOCKET, 1) and p.allows(p.MASTER_SOCKET, 9)
    assert not p.allows(0xFFFF, 112)  # a reply is never a request
    assert not p.allows(0xFFFF, 9999)
    assert 99 in p.REQUEST_TYPES and 11 in p.REQUEST_TYPES and 1000 not in p.REQUEST_TYPES
