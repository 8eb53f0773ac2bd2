"""Messages: decode bodies, encode them back byte for byte, build new ones from field values."""

from __future__ import annotations

import difflib
from io import BytesIO

from . import messages as _hsmd_messages
from . import status as _status_messages
from .errors import DecodeError, EncodeError
from .render import to_jsonable
from .schema import MessageSpec
from .types import Located


def _collect(*modules) -> list[MessageSpec]:
    return [v for m in modules for v in vars(m).values() if isinstance(v, MessageSpec)]


ALL_SPECS: tuple[MessageSpec, ...] = tuple(_collect(_hsmd_messages, _status_messages))
SPECS_BY_NAME: dict[str, MessageSpec] = {s.name: s for s in ALL_SPECS}
SPECS_BY_TYPE: dict[int, MessageSpec] = {s.type: s for s in ALL_SPECS}
assert len(SPECS_BY_NAME) == len(SPECS_BY_TYPE) == len(ALL_SPECS), "duplicate message name or number"


# Fields that carry another hsmd message whole, by message: hsmd reports a refused client request
# on its status socket with the request itself. Whatever renders or records such a message must
# treat the embedded one like a message of its own (wire.render redacts its secrets).
EMBEDDED_MESSAGE_FIELDS: dict[str, str] = {"hsmstatus_client_bad_request": "msg"}
# Text fields in which a daemon quotes bytes as hex, a refused message among them: Core Lightning's
# master_badmsg fails with "Error parsing 11: <the whole hsmd_init, passphrase included, as hex>".
QUOTING_TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "status_fail": ("desc",),
    "status_log": ("entry",),
    "hsmstatus_client_bad_request": ("description",),
}


def unknown_name(number: int) -> str:
    return f"unknown_{number}"


def type_name(number: int | None) -> str:
    """The name of a message type: its CSV name, ``unknown_N``, or for None (a body shorter than
    a type) ``too_short_for_a_type``."""
    if not isinstance(number, int):
        return "too_short_for_a_type"
    spec = SPECS_BY_TYPE.get(number)
    return spec.name if spec is not None else unknown_name(number)


class Message:
    """One hsmd message: its type, CSV name, field values (a dict), and any trailing bytes.

    ``spec`` is None for types the codec does not know; their payload is ``fields["payload"]``.
    ``repr`` never shows secret values.
    """

    __slots__ = ("type", "name", "fields", "trailing", "spec")

    def __init__(self, type: int, name: str, fields: dict, trailing: bytes = b"", spec: MessageSpec | None = None):
        self.type = type
        self.name = name
        self.fields = fields
        self.trailing = trailing
        self.spec = spec

    @property
    def known(self) -> bool:
        return self.spec is not None

    @property
    def secret_fields(self) -> tuple[str, ...]:
        return self.spec.secret_fields if self.spec else ()

    @property
    def embedded_field(self) -> str | None:
        """The field that carries another hsmd message whole, if this message has one."""
        return EMBEDDED_MESSAGE_FIELDS.get(self.name) if self.spec is not None else None

    @property
    def quoting_text_fields(self) -> tuple[str, ...]:
        """Text fields that may quote bytes (another message, a key) as hex."""
        return QUOTING_TEXT_FIELDS.get(self.name, ()) if self.spec is not None else ()

    def embedded_message(self) -> "Message | None":
        """The message carried in ``embedded_field``, decoded; None when this message carries
        none. Raises DecodeError when those bytes are not a well-formed message."""
        name = self.embedded_field
        return None if name is None else decode(bytes(self.fields[name]))

    def __getitem__(self, name: str):
        return self.fields[name]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.type, self.fields, self.trailing) == (other.type, other.fields, other.trailing)

    def __repr__(self) -> str:
        shown = to_jsonable(self, max_bytes=16)
        return f"<Message {self.name} ({self.type}) {shown['fields']}{' +trailing' if self.trailing else ''}>"


def decode(body: bytes) -> Message:
    """Parse one frame body (the u16 type and the fields, without the 4-byte length).

    Raises DecodeError naming the message, the field and the byte offset when the body is
    malformed. Unknown types decode to an opaque Message. Bytes after the last field are kept
    in ``trailing`` (Core Lightning ignores them, so must we).
    """
    if len(body) < 2:
        raise DecodeError(f"body of {len(body)} byte(s) is too short for a message type", field="type", offset=0)
    number = (body[0] << 8) | body[1]
    spec = SPECS_BY_TYPE.get(number)
    if spec is None:
        return Message(number, unknown_name(number), {"payload": bytes(body[2:])})
    io = BytesIO(body)
    io.seek(2)
    try:
        fields = spec.compiled.parsefunc(io, None)
    except Exception:
        _raise_located_decode(spec, body)
        raise  # unreachable unless the two paths disagree; keep the original error then
    return Message(number, spec.name, fields, io.read(), spec)


def _raise_located_decode(spec: MessageSpec, body: bytes) -> None:
    io = BytesIO(body)
    io.seek(2)
    try:
        spec.record.parse_located(io, "")
    except Located as exc:
        raise DecodeError(exc.reason, message=spec.name, field=exc.path, offset=exc.offset) from None


def encode(message: Message) -> bytes:
    """The body of ``message``: the exact original bytes for anything ``decode`` returned."""
    head = message.type.to_bytes(2, "big")
    spec = message.spec
    if spec is None:
        return head + message.fields.get("payload", b"") + message.trailing
    io = BytesIO()
    io.write(head)
    try:
        spec.compiled.buildfunc(message.fields, io, None)
    except Exception:
        io = BytesIO()
        try:
            spec.record.build_located(io, message.fields, "")
        except Located as exc:
            raise EncodeError(exc.reason, message=spec.name, field=exc.path) from None
        raise
    if message.trailing:
        if spec.has_tlvs:
            raise EncodeError("a message ending in a TLV stream cannot carry trailing bytes", message=spec.name)
        io.write(message.trailing)
    return io.getvalue()


def lookup(name_or_type: str | int) -> MessageSpec:
    """The spec for a CSV name or a message number; a clear error with suggestions otherwise."""
    if isinstance(name_or_type, int):
        try:
            return SPECS_BY_TYPE[name_or_type]
        except KeyError:
            raise KeyError(f"no hsmd message has type {name_or_type}") from None
    spec = SPECS_BY_NAME.get(name_or_type)
    if spec is None:
        close = difflib.get_close_matches(name_or_type, SPECS_BY_NAME, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no hsmd message is named {name_or_type!r}{hint}")
    return spec


def build(name_or_type: str | int, *, trailing: bytes = b"", **fields) -> Message:
    """A new message from field values. Absent optionals default to None, TLV streams to {}.

    The values are checked by encoding them, so an invalid message fails here (EncodeError),
    not later on a socket.
    """
    spec = lookup(name_or_type)
    values = {}
    for f in spec.fields:
        if f.name in fields:
            values[f.name] = fields.pop(f.name)
        elif f.optional:
            values[f.name] = None
        elif f.name == "tlvs" and spec.has_tlvs:
            values[f.name] = {}
        else:
            raise EncodeError("missing field", message=spec.name, field=f.name)
    if fields:
        known = [f.name for f in spec.fields]
        raise EncodeError(f"unknown field(s) {sorted(fields)}; fields are {known}", message=spec.name)
    message = Message(spec.type, spec.name, values, trailing, spec)
    encode(message)
    return message
