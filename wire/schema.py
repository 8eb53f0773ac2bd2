"""The declaration language of the codec: fields, messages, subtypes and TLV streams.

``wire/messages.py`` and ``wire/status.py`` declare every message with these helpers; this
module turns a declaration into construct types, compiled on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field

from .types import SECRET_TYPES, TYPES, U8_ARRAY, Counted, Optional, Record, TlvRecord, TlvStream, WireType


@dataclass(frozen=True)
class FieldSpec:
    """One field of a message, as in the CSV. ``count`` names the implicit u16 count field."""

    name: str
    type_name: str
    construct: WireType = dataclass_field(repr=False, compare=False)
    secret: bool = False
    count: str | None = None

    @property
    def optional(self) -> bool:
        return self.type_name.startswith("?")


def _resolve(type_name: str, count: str | None) -> WireType:
    base = type_name[1:] if type_name.startswith("?") else type_name
    try:
        construct = TYPES[base]
    except KeyError:
        raise ValueError(f"unknown field type {base!r}; declare it in wire/types.py or as a subtype") from None
    if count is not None:
        if type_name.startswith("?"):
            raise ValueError("an optional array is not part of the CSV dialect")
        construct = U8_ARRAY if base == "u8" else Counted(construct)
    if type_name.startswith("?"):
        construct = Optional(construct)
    return construct


def field(name: str, type_name, *, count: str | None = None, secret: bool = False) -> FieldSpec:
    """A message field. ``type_name`` is a CSV type name (``?T`` for optionals) or a TLV stream."""
    if isinstance(type_name, TlvStream):
        return FieldSpec(name, type_name.type_name, type_name, secret=secret)
    construct = _resolve(type_name, count)
    base = type_name.lstrip("?")
    if base in SECRET_TYPES and not secret:
        raise ValueError(f"field {name!r} has secret type {base!r} but is not marked secret=True")
    return FieldSpec(name, type_name, construct, secret=secret, count=count)


def tlv_record(name: str, number: int, field_name: str, type_name: str, *, secret: bool = False) -> TlvRecord:
    """A TLV record with a single value field (the only shape hsmd's CSV uses)."""
    record = TlvRecord(name, number, _resolve(type_name, None), secret=secret)
    record.field_name = field_name
    record.type_name = type_name
    return record


def tlv_stream(name: str, *records: TlvRecord) -> TlvStream:
    return TlvStream(name, list(records))


def subtype(name: str, *fields: FieldSpec) -> Record:
    """Declare a CSV subtype; it becomes usable as a field type by its name."""
    record = Record(name, [(f.name, f.construct) for f in fields])
    record.specs = fields
    TYPES[name] = record
    return record


class MessageSpec:
    """One message type: its number, name, fields in CSV order, and its compiled codec."""

    def __init__(self, name: str, number: int, fields: tuple[FieldSpec, ...]):
        self.name = name
        self.type = number
        self.fields = fields
        self.record = Record(name, [(f.name, f.construct) for f in fields])
        self.secret_fields = tuple(f.name for f in fields if f.secret)
        self.tlv = next((f.construct for f in fields if isinstance(f.construct, TlvStream)), None)
        self._compiled = None

    @property
    def compiled(self):
        if self._compiled is None:
            self._compiled = self.record.compile()
        return self._compiled

    @property
    def has_tlvs(self) -> bool:
        return self.tlv is not None

    def __repr__(self) -> str:
        return f"<MessageSpec {self.name} ({self.type})>"


def message(name: str, number: int, *fields: FieldSpec) -> MessageSpec:
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: duplicate field names {names}")
    return MessageSpec(name, number, fields)
