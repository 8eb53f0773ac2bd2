"""Errors of the codec. Both are ValueErrors so callers can treat bad input uniformly."""

from __future__ import annotations


def _where(message: str | None, field: str | None) -> str:
    """``hsmd_init.dev_privkey``: the message and the field path, for error texts."""
    return f"{message or 'message'}.{field}" if field else f"{message or 'message'}"


class DecodeError(ValueError):
    """A body that is not a well-formed hsmd message.

    ``message`` is the message name (None when even the type cannot be read), ``field`` the
    dotted path of the field that failed (``tx.psbt``, ``htlcs[2].side``), ``offset`` the byte
    offset of that field within the body (the 2-byte type included).
    """

    def __init__(self, reason: str, *, message: str | None = None, field: str | None = None, offset: int = 0):
        self.reason = reason
        self.message = message
        self.field = field
        self.offset = offset
        super().__init__(f"{_where(message, field)} at byte {offset}: {reason}")


class EncodeError(ValueError):
    """Field values that cannot be encoded (missing field, wrong type, value out of range)."""

    def __init__(self, reason: str, *, message: str | None = None, field: str | None = None):
        self.reason = reason
        self.message = message
        self.field = field
        super().__init__(f"{_where(message, field)}: {reason}")


class WireValueError(Exception):
    """Raised by the primitive readers and writers; located and wrapped by the schema layer."""
