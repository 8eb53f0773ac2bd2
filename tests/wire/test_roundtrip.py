"""Property tests: every message type round-trips; garbage only ever raises DecodeError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from tests.wire.strategies import fields_for

SPECS = sorted(wire.ALL_SPECS, key=lambda s: s.type)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fields_encode_decode_roundtrip(spec, data):
    fields = data.draw(fields_for(spec))
    trailing = b"" if spec.has_tlvs else data.draw(st.binary(max_size=4))
    message = wire.build(spec.name, trailing=trailing, **fields)
    body = wire.encode(message)
    again = wire.decode(body)
    assert again == message
    assert again.name == spec.name
    assert wire.encode(again) == body


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(body):
    try:
        message = wire.decode(body)
    except wire.DecodeError:
        return
    assert wire.encode(message) == body


@settings(max_examples=300, deadline=None)
@given(type_=st.sampled_from([s.type for s in SPECS]), payload=st.binary(max_size=200))
def test_known_type_with_random_payload_raises_only_decode_error(type_, payload):
    body = type_.to_bytes(2, "big") + payload
    try:
        message = wire.decode(body)
    except wire.DecodeError as exc:
        assert exc.message == wire.SPECS_BY_TYPE[type_].name
        assert 0 <= exc.offset <= len(body)
        return
    assert wire.encode(message) == body


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_truncating_a_valid_message_names_a_field(data):
    spec = data.draw(st.sampled_from([s for s in SPECS if s.fields and not s.has_tlvs]))
    body = wire.encode(wire.build(spec.name, **data.draw(fields_for(spec))))
    cut = data.draw(st.integers(2, len(body) - 1))
    with pytest.raises(wire.DecodeError) as info:
        wire.decode(body[:cut])
    assert info.value.message == spec.name and info.value.field
    assert 2 <= info.value.offset <= cut
