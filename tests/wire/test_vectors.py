"""The real hsmd captures: every message decodes to its recorded type and name and re-encodes
byte for byte; the malformed ones raise DecodeError."""

from __future__ import annotations

import json

import pytest

import wire
from tests.paths import CAPTURE

VECTORS = CAPTURE
RECORDS = [json.loads(line) for line in VECTORS.read_text().splitlines() if line.strip()]
MESSAGES = [r for r in RECORDS if r["kind"] == "msg"]

# Records that a real hsmd rejected as malformed (its notes say so); every other one is well formed.
MALFORMED_SEQS = {r["seq"] for r in MESSAGES if "truncated" in r.get("note", "").lower()}


def _id(record) -> str:
    return f"{record['seq']}-{record['name'] or record['type']}"


def test_capture_is_the_expected_one():
    assert len(MESSAGES) > 300
    assert MALFORMED_SEQS, "the capture's truncated request should be found"


@pytest.mark.parametrize("record", [r for r in MESSAGES if r["seq"] not in MALFORMED_SEQS], ids=_id)
def test_vector_decodes_and_reencodes_byte_for_byte(record):
    body = bytes.fromhex(record["hex"])
    assert bytes.fromhex(record["framed_hex"]) == wire.frame(body)
    message = wire.decode(body)
    assert message.type == record["type"]
    assert (message.name if message.known else None) == record["name"]
    assert wire.encode(message) == body
    assert message.trailing == b""


@pytest.mark.parametrize("record", [r for r in MESSAGES if r["seq"] in MALFORMED_SEQS], ids=_id)
def test_malformed_vector_raises_decode_error(record):
    with pytest.raises(wire.DecodeError) as info:
        wire.decode(bytes.fromhex(record["hex"]))
    assert info.value.message == record["name"]
    assert info.value.field and info.value.offset >= 2


def test_decoded_annotations_agree():
    """Spot-check field values against the capture's independent decodings."""
    checked = 0
    for record in MESSAGES:
        decoded = record.get("decoded")
        if not decoded:
            continue
        message = wire.decode(bytes.fromhex(record["hex"]))
        if record["name"] == "hsmd_init_reply_v4":
            assert message.fields["hsm_version"] == decoded["hsm_version"]
            assert message.fields["hsm_capabilities"] == decoded["capabilities"]
            assert message.fields["node_id"].hex() == decoded["node_id"]
            checked += 1
        elif record["name"] == "status_version":
            assert message.fields["version"] == decoded["version"]
            checked += 1
        elif record["name"] == "status_log" and "entry" in decoded:
            assert message.fields["entry"] == decoded["entry"]
            checked += 1
        elif record["name"] == "hsmstatus_client_bad_request":
            assert message.fields["description"] == decoded["description"]
            assert message.fields["msg"].hex() == decoded["msg_hex"]
            checked += 1
    assert checked > 50


# Hand-constructed vectors from the reference (§9.3), G = the secp256k1 generator.
G = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
HAND_VECTORS = [
    (
        "00000037000b043587cf0435839406226e46111a0b59caaf126043eb5bbf28c34f3a5e332a1fc7b2b73cf188910f"
        "00000000000000000500000006",
        "hsmd_init",
        {"hsm_wire_min_version": 5, "hsm_wire_max_version": 6, "tlvs": {}, "hsm_encryption_key": None},
    ),
    (
        "00000040000b043587cf0435839406226e46111a0b59caaf126043eb5bbf28c34f3a5e332a1fc7b2b73cf188910f"
        "0000000000000000050000000601077365637265740" + "0",
        "hsmd_init",
        {"tlvs": {"hsm_passphrase": "secret"}},
    ),
    ("000000330009" + G + "0000000000000001" + "00000000000001bf", "hsmd_client_hsmfd",
     {"dbid": 1, "permissions": 0x1BF}),
    ("00000002006d", "hsmd_client_hsmfd_reply", {}),
    ("0000000a0012000000000000002a", "hsmd_get_per_commitment_point", {"n": 42}),
    ("000000240076" + G + "00", "hsmd_get_per_commitment_point_reply", {"old_commitment_secret": None}),
    ("0000000a00280000000000000003", "hsmd_revoke_commitment_tx", {"commit_num": 3}),
    ("00000043008c" + "22" * 32 + G, "hsmd_revoke_commitment_tx_reply", {"old_commitment_secret": b"\x22" * 32}),
    ("0000002a00240000000000000002" + "11" * 32, "hsmd_validate_revocation", {"revoke_num": 2}),
    ("000000020088", "hsmd_validate_revocation_reply", {}),
    ("00000024008700" + G, "hsmd_validate_commitment_tx_reply", {"old_commitment_secret": None}),
    ("0000002b001e" + G + "0000000000000007", "hsmd_new_channel", {"dbid": 7}),
    ("0000000b0063010100030100050101", "hsmd_dev_preinit",
     {"tlvs": {"fail_preapprove": False, "no_preapprove_check": False, "warn_on_overgrind": True}}),
    ("0000000afff00300" + "68656c6c6f00", "status_log", {"level": 3, "peer": None, "entry": "hello"}),
    ("0000000dfff6" + "62616476657273696f6e00", "status_version", {"version": "badversion"}),
]


@pytest.mark.parametrize("framed_hex,name,expected", HAND_VECTORS, ids=[v[1] for v in HAND_VECTORS])
def test_hand_constructed_vectors(framed_hex, name, expected):
    reader = wire.FrameReader()
    (body,) = reader.bodies(bytes.fromhex(framed_hex))
    message = wire.decode(body)
    assert message.name == name
    for key, value in expected.items():
        assert message.fields[key] == value
    assert wire.frame(wire.encode(message)).hex() == framed_hex
