"""Redaction: nothing that is or may be secret is shown by default, whether or not it decodes.

A message is recorded as it came (``holds_no_secret``) exactly when the redacted view hides
nothing; a message carried whole in another one (hsmd's refused request in
``hsmstatus_client_bad_request``) is redacted like a message of its own.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from tests.wire.strategies import fields_for

SPECS = sorted(wire.ALL_SPECS, key=lambda s: s.type)
SECRET = bytes(range(0x40, 0x60))
NODE = bytes.fromhex("02" + "ab" * 32)


def bad_request(embedded: bytes, description: str = "client does not have capability to run 22") -> wire.Message:
    return wire.build("hsmstatus_client_bad_request", id=NODE, description=description, msg=embedded)


def future_secret_request() -> bytes:
    return wire.encode(wire.build("hsmd_check_future_secret", n=5, commitment_secret=SECRET))


def shown(message: wire.Message, **kwargs) -> str:
    return json.dumps(wire.to_jsonable(message, **kwargs)) + repr(message)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_recorded_as_it_came_exactly_when_redaction_hides_nothing(spec, data):
    fields = data.draw(fields_for(spec))
    trailing = b"" if spec.has_tlvs else data.draw(st.binary(max_size=3))
    message = wire.decode(wire.encode(wire.build(spec.name, trailing=trailing, **fields)))
    hides_nothing = wire.to_jsonable(message) == wire.to_jsonable(message, show_secrets=True)
    assert wire.holds_no_secret(message) == hides_nothing


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_embedded_message_is_redacted_like_the_message_itself(spec, data):
    inner_body = wire.encode(wire.build(spec.name, **data.draw(fields_for(spec))))
    inner, outer = wire.decode(inner_body), bad_request(inner_body)
    assert wire.holds_no_secret(outer) == (spec.type != 1000 and wire.holds_no_secret(inner))
    view = wire.to_jsonable(outer)["fields"]["msg"]
    if spec.type != 1000:  # a bad_request inside a bad_request is nested too deep to decode
        assert view == {**wire.to_jsonable(inner), "len": len(inner_body)}


def test_a_refused_request_holding_a_secret_is_decoded_and_redacted():
    outer = bad_request(future_secret_request())
    assert not wire.holds_no_secret(outer)
    view = wire.to_jsonable(outer)["fields"]["msg"]
    assert view == {"type": 22, "name": "hsmd_check_future_secret", "len": 42,
                    "fields": {"n": 5, "commitment_secret": wire.REDACTED}}
    assert SECRET.hex() not in shown(outer)
    assert wire.redacted_fields(outer)["msg"] == "<redacted: 42 bytes>"
    assert wire.to_jsonable(outer, show_secrets=True)["fields"]["msg"]["fields"]["commitment_secret"] == SECRET.hex()


def test_an_embedded_message_that_does_not_decode_is_type_and_length_only():
    cut = future_secret_request()[:-1]  # one byte short: the secret does not fit
    outer = bad_request(cut)
    assert outer.embedded_field == "msg"
    with pytest.raises(wire.DecodeError):
        outer.embedded_message()
    assert not wire.holds_no_secret(outer)
    assert wire.to_jsonable(outer)["fields"]["msg"] == {"type": 22, "len": 41, "undecodable": True}
    assert SECRET[:-1].hex() not in shown(outer) and SECRET[:8].hex() not in shown(outer)
    assert wire.to_jsonable(outer, show_secrets=True)["fields"]["msg"]["hex"] == cut.hex()
    empty = bad_request(b"")
    assert wire.to_jsonable(empty)["fields"]["msg"] == {"type": None, "len": 0, "undecodable": True}


def test_a_clean_embedded_request_is_recorded_as_it_came():
    outer = bad_request(wire.encode(wire.build("hsmd_get_per_commitment_point", n=3)))
    assert wire.holds_no_secret(outer)
    assert wire.to_jsonable(outer)["fields"]["msg"]["fields"] == {"n": 3}


def test_nesting_is_bounded():
    nested = bad_request(wire.encode(bad_request(wire.encode(wire.build("hsmd_get_per_commitment_point", n=3)))))
    assert not wire.holds_no_secret(nested)
    assert wire.to_jsonable(nested)["fields"]["msg"]["fields"]["msg"] == {"type": 18, "len": 10, "too_deep": True}
    deep = b""
    while len(deep) < 65_000:  # a crafted body, ~1700 levels deep: no recursion without end
        deep = wire.encode(bad_request(deep, description=""))
    assert not wire.holds_no_secret(wire.decode(deep))
    assert wire.to_jsonable(wire.decode(deep))["fields"]["msg"]["fields"]["msg"]["too_deep"]


def test_bytes_the_codec_cannot_read_are_shown_by_length():
    unknown = wire.decode(b"\x27\x0f" + SECRET)
    assert not wire.holds_no_secret(unknown)
    assert wire.to_jsonable(unknown)["fields"]["payload"] == "<redacted: 32 bytes>"
    tlv = wire.decode(bytes.fromhex("0063") + bytes.fromhex("0720") + SECRET)  # unknown odd TLV record 7
    assert not wire.holds_no_secret(tlv) and SECRET.hex() not in shown(tlv)
    trailing = wire.decode(wire.encode(wire.build("hsmd_get_per_commitment_point", n=3)) + SECRET)
    assert not wire.holds_no_secret(trailing) and SECRET.hex() not in shown(trailing)
    logged = wire.build("status_io", iodir=0, peer=None, who="hsmd", data=SECRET)  # logged traffic: anything
    assert not wire.holds_no_secret(logged) and SECRET.hex() not in shown(logged)


def test_hex_quoted_in_a_failure_text_is_shown_by_length():
    # Core Lightning's master_badmsg quotes the refused master message whole
    init = bytes.fromhex("000b") + SECRET
    fail = wire.build("status_fail", failreason=0, desc=f"Error parsing 11: {init.hex()}")
    assert not wire.holds_no_secret(fail)
    assert wire.to_jsonable(fail)["fields"]["desc"] == "Error parsing 11: <redacted: 34 bytes>"
    assert SECRET.hex() not in shown(fail)
    assert wire.to_jsonable(fail, show_secrets=True)["fields"]["desc"].endswith(init.hex())
    quoting = bad_request(wire.encode(wire.build("hsmd_get_per_commitment_point", n=3)),
                          description=f"Error parsing 18: {SECRET.hex()}")
    assert not wire.holds_no_secret(quoting) and SECRET.hex() not in shown(quoting)
    plain = wire.build("status_log", level=3, peer=None, entry="Got hsmd_sign_commitment_tx dbid 12")
    assert wire.holds_no_secret(plain)
