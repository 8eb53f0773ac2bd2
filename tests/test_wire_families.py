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
