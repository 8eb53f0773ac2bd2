"""Sans-IO codec for Core Lightning's hsmd protocol (hsmd_wire.csv, v26.06-258) and status messages.

Public API::

    msg = wire.decode(body)          # body: a frame without its 4-byte length -> Message
    msg.type, msg.name, msg.fields, msg.trailing
    wire.encode(msg) -> bytes        # the exact original body for decoded messages
    wire.build("hsmd_init", ...)     # a new Message from field values
    wire.FrameReader, wire.frame     # framing
    wire.to_jsonable(msg, show_secrets=False)
"""

from .codec import ALL_SPECS, SPECS_BY_NAME, SPECS_BY_TYPE, Message, build, decode, encode, lookup, unknown_name
from .errors import DecodeError, EncodeError
from .framing import HEADER_LEN, MAX_BODY_LEN, FrameReader, FramingError, frame
from .render import REDACTED, redacted_fields, to_jsonable
from .schema import FieldSpec, MessageSpec

__all__ = [
    "ALL_SPECS",
    "SPECS_BY_NAME",
    "SPECS_BY_TYPE",
    "Message",
    "build",
    "decode",
    "encode",
    "lookup",
    "unknown_name",
    "DecodeError",
    "EncodeError",
    "HEADER_LEN",
    "MAX_BODY_LEN",
    "FrameReader",
    "FramingError",
    "frame",
    "REDACTED",
    "redacted_fields",
    "to_jsonable",
    "FieldSpec",
    "MessageSpec",
]
