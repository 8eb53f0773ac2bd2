"""Each field type's exact encoding and its strictness, as Core Lightning parses it."""

from __future__ import annotations

import pytest

import wire

G = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
SIG = bytes(range(1, 65))


def body(hex_type: str, payload: bytes) -> bytes:
    return bytes.fromhex(hex_type) + payload


def test_integers_are_big_endian():
    message = wire.decode(body("0012", (0x0102030405060708).to_bytes(8, "big")))
    assert message.fields == {"n": 0x0102030405060708}


def test_bool_is_strict():
    assert wire.decode(body("0084", b"\x01")).fields == {"is_buried": True}
    with pytest.raises(wire.DecodeError, match=r"is_buried at byte 2: bool byte is 0x02"):
        wire.decode(body("0084", b"\x02"))


def test_optional_presence_byte_is_strict():
    with pytest.raises(wire.DecodeError) as info:
        wire.decode(body("0076", G + b"\x02"))
    assert info.value.field == "old_commitment_secret" and info.value.offset == 35


def test_pubkey_must_be_a_compressed_point_but_node_id_is_raw():
    with pytest.raises(wire.DecodeError, match="point"):
        wire.decode(body("0001", b"\x04" + G[1:]))
    # hsmd_client_hsmfd's node_id is not validated by Core Lightning either
    message = wire.decode(body("0009", b"\x04" + G[1:] + bytes(16)))
    assert message.fields["id"][0] == 4


def test_bitcoin_signature_sighash_is_all_or_single_anyonecanpay():
    assert wire.decode(body("0070", SIG + b"\x01")).fields["sig"] == SIG + b"\x01"
    assert wire.decode(body("0070", SIG + b"\x83")).fields["sig"] == SIG + b"\x83"
    with pytest.raises(wire.DecodeError, match="sighash byte 0x02"):
        wire.decode(body("0070", SIG + b"\x02"))


def test_compact_signature_overflow_is_rejected():
    with pytest.raises(wire.DecodeError, match="overflows"):
        wire.decode(body("006a", b"\xff" * 64))


def test_wirestring_needs_nul_and_no_control_bytes():
    assert wire.decode(body("fff6", b"v1\x00")).fields == {"version": "v1"}
    with pytest.raises(wire.DecodeError, match="no terminating NUL"):
        wire.decode(body("fff6", b"v1"))
    with pytest.raises(wire.DecodeError, match="control byte"):
        wire.decode(body("fff6", b"v\n1\x00"))


def test_wirestring_with_non_utf8_bytes_roundtrips():
    raw = body("fff6", b"caf\xe9\x00")
    assert wire.encode(wire.decode(raw)) == raw


def test_bitcoin_tx_is_raw_tx_then_psbt_and_psbt_may_not_be_empty():
    tx = bytes.fromhex("02000000000000000000")
    psbt = b"psbt\xff\x01\x00"
    good = body("0015", len(tx).to_bytes(4, "big") + tx + len(psbt).to_bytes(4, "big") + psbt + G)
    message = wire.decode(good)
    assert message.fields["tx"] == {"tx": tx, "psbt": psbt}
    empty = body("0015", len(tx).to_bytes(4, "big") + tx + bytes(4) + G)
    with pytest.raises(wire.DecodeError) as info:
        wire.decode(empty)
    assert info.value.field == "tx.psbt" and "empty" in info.value.reason


def test_arrays_are_u16_counted_and_count_is_implicit():
    htlc = bytes([1]) + (5000).to_bytes(8, "big") + b"\xaa" * 32 + (144).to_bytes(4, "big")
    message = wire.decode(body("0087", b"\x00" + G))  # validate_commitment_tx_reply
    assert message.fields["old_commitment_secret"] is None
    built = wire.build(
        "hsmd_validate_commitment_tx",
        tx={"tx": b"\x02", "psbt": b"psbt\xff"},
        htlcs=[{"side": 1, "amount": 5000, "payment_hash": b"\xaa" * 32, "cltv_expiry": 144}],
        commit_num=7,
        feerate=253,
        sig=SIG + b"\x01",
        htlc_sigs=[],
    )
    encoded = wire.encode(built)
    assert htlc in encoded and b"\x00\x01" + htlc in encoded
    assert "num_htlcs" not in built.fields


def test_side_enum_is_0_or_1():
    payload = (1).to_bytes(4, "big") + b"\x02" + (5).to_bytes(4, "big") + b"psbt\xff" + b"\x00\x01"
    payload += b"\x02" + bytes(8 + 32 + 4)  # one htlc with side 2
    with pytest.raises(wire.DecodeError) as info:
        wire.decode(body("0023", payload))
    assert info.value.field == "htlcs[0].side"


def test_trailing_bytes_are_kept_and_reencoded():
    raw = body("0012", (5).to_bytes(8, "big") + b"\xde\xad")
    message = wire.decode(raw)
    assert message.fields == {"n": 5} and message.trailing == b"\xde\xad"
    assert wire.encode(message) == raw
    # bytes the codec cannot read may be anything: shown only when secrets are asked for
    assert wire.to_jsonable(message)["trailing"] == "<redacted: 2 bytes>"
    assert wire.to_jsonable(message, show_secrets=True)["trailing"] == "dead"


def test_tlv_unknown_odd_kept_unknown_even_rejected():
    base = bytes.fromhex("0063")
    kept = wire.decode(base + bytes.fromhex("010101" "0703abcdef"))
    assert kept.fields["tlvs"] == {"fail_preapprove": True, 7: b"\xab\xcd\xef"}
    assert wire.encode(kept) == base + bytes.fromhex("010101" "0703abcdef")
    with pytest.raises(wire.DecodeError, match="unknown even TLV type 8"):
        wire.decode(base + bytes.fromhex("080100"))


def test_tlv_order_minimal_bigsize_and_exact_length():
    base = bytes.fromhex("0063")
    with pytest.raises(wire.DecodeError, match="ascend"):
        wire.decode(base + bytes.fromhex("030100" "010100"))
    with pytest.raises(wire.DecodeError, match="minimally"):
        wire.decode(base + bytes.fromhex("fd0001" "0100"))
    with pytest.raises(wire.DecodeError, match="after its value"):
        wire.decode(base + bytes.fromhex("01020100"))


def test_init_passphrase_tlv_includes_the_nul():
    message = wire.build(
        "hsmd_init",
        bip32_key_version={"pubkey_version": 0x043587CF, "privkey_version": 0x04358394},
        chainparams=bytes(32),
        hsm_wire_min_version=5,
        hsm_wire_max_version=6,
        tlvs={"hsm_passphrase": "secret"},
    )
    assert wire.encode(message).endswith(bytes.fromhex("01077365637265740" + "0"))


def test_unknown_type_is_opaque_and_roundtrips():
    raw = bytes.fromhex("270f0102")
    message = wire.decode(raw)
    assert message.name == "unknown_9999" and not message.known
    assert message.fields == {"payload": b"\x01\x02"}
    assert wire.encode(message) == raw


def test_body_too_short_for_a_type():
    for raw in (b"", b"\x00"):
        with pytest.raises(wire.DecodeError) as info:
            wire.decode(raw)
        assert info.value.field == "type"


def test_build_names_missing_and_unknown_fields_and_suggests_names():
    with pytest.raises(wire.EncodeError, match="hsmd_new_channel.dbid: missing field"):
        wire.build("hsmd_new_channel", id=G)
    with pytest.raises(wire.EncodeError, match="unknown field"):
        wire.build("hsmd_new_channel", id=G, dbid=1, extra=2)
    with pytest.raises(KeyError, match="did you mean hsmd_sign_remote_commitment_tx"):
        wire.build("hsmd_sign_remote_commitment", commit_num=1)
    with pytest.raises(wire.EncodeError, match=r"hsmd_new_channel.dbid: .* does not fit in u64"):
        wire.build("hsmd_new_channel", id=G, dbid=2**64)


def test_secrets_are_redacted_unless_asked():
    message = wire.build("hsmd_ecdh_resp", ss=b"\x42" * 32)
    assert wire.to_jsonable(message)["fields"]["ss"] == wire.REDACTED
    assert wire.to_jsonable(message, show_secrets=True)["fields"]["ss"] == "42" * 32
    assert "42424242" not in repr(message)
    init = wire.build(
        "hsmd_init",
        bip32_key_version={"pubkey_version": 1, "privkey_version": 2},
        chainparams=bytes(32),
        hsm_wire_min_version=5,
        hsm_wire_max_version=6,
        tlvs={"hsm_passphrase": "hunter2"},
    )
    shown = wire.to_jsonable(init)
    assert shown["fields"]["tlvs"]["hsm_passphrase"] == wire.REDACTED
    assert shown["fields"]["hsm_encryption_key"] is None
    assert "hunter2" not in repr(init)
