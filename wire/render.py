"""Messages as JSON-friendly data for people and machines, with secrets redacted by default.

Redacted (the default) means every value that is, or may be, secret is left out: the fields the
codec marks secret, and every byte it cannot read, since those may hold anything (an unknown
message's payload, unknown TLV records, trailing bytes). A message that carries another one
whole (``Message.embedded_field``: hsmd reports a refused request with the request itself) shows
it decoded and redacted the same way; one that does not decode shows its type and length only.
Hex that a status or failure text quotes (hsmd quotes a refused message whole) is shown by its
length. So redaction never depends on a message decoding.

This module asks the message for what it embeds and never imports the codec (which imports it).
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"

# Hex that a daemon quotes in a log or failure text (``Message.quoting_text_fields``): a run this
# long is bytes, maybe a refused message holding a secret; shorter runs are words and numbers.
QUOTED_HEX = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{16,}(?![0-9A-Fa-f])")

# A refused request is carried by a status message; nothing real nests deeper. Deeper nesting is
# shown by type and length only, so a crafted body cannot make rendering recurse without end.
MAX_EMBEDDING_DEPTH = 2


def redacted_bytes(length: int) -> str:
    """What stands for bytes that cannot be shown: their length only."""
    return f"{REDACTED[:-1]}: {length} bytes>"


def is_redacted(value) -> bool:
    """Whether a rendered value stands for something left out (a secret, unreadable bytes)."""
    return isinstance(value, str) and value.startswith(REDACTED[:-1])


def _plain(value, max_bytes: int | None):
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if max_bytes is not None and len(raw) > max_bytes:
            return raw[:max_bytes].hex() + f"...({len(raw)} bytes)"
        return raw.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v, max_bytes) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, max_bytes) for v in value]
    return value


def body_type(body: bytes) -> int | None:
    """The message type of a body (its first two bytes), None when it is too short for one."""
    return int.from_bytes(body[:2], "big") if len(body) >= 2 else None


def holds_no_secret(message, _depth: int = 0) -> bool:
    """Whether the message's bytes provably hold no secret: a known type, no secret field or TLV
    record present, no bytes the codec cannot read (unknown TLV records, trailing bytes), and an
    embedded message that decodes and holds none either. Only such a message may be recorded as
    it came when secrets must be kept out."""
    spec = message.spec
    if spec is None or message.trailing:
        return False
    fields = message.fields
    for name in spec.secret_fields:
        if fields.get(name) is not None:
            return False
    tlv = spec.tlv
    if tlv is not None:
        for spec_field in spec.fields:
            if spec_field.construct is tlv:
                for key in fields.get(spec_field.name) or {}:
                    record = tlv.by_name.get(key) if isinstance(key, str) else None
                    if record is None or record.secret:
                        return False
    for name in message.quoting_text_fields:
        if QUOTED_HEX.search(str(fields.get(name) or "")):
            return False
    return message.embedded_field is None or _embedded_holds_no_secret(message, _depth)


def _without_quoted_hex(text: str) -> str:
    return QUOTED_HEX.sub(lambda m: redacted_bytes(len(m.group()) // 2), text)


def _embedded_holds_no_secret(message, depth: int) -> bool:
    if depth + 1 >= MAX_EMBEDDING_DEPTH:
        return False
    try:
        inner = message.embedded_message()
    except ValueError:  # DecodeError: bytes that are not a message may be anything
        return False
    return holds_no_secret(inner, depth + 1)


def redacted_fields(message, show_secrets: bool = False) -> dict:
    """The message's fields with everything that is or may be secret replaced (None stays None:
    absence is not secret). An embedded message is replaced whole unless it holds no secret;
    ``to_jsonable`` shows it decoded instead."""
    fields = _redacted_own_fields(message, show_secrets)
    embedded = message.embedded_field
    if embedded is not None and not show_secrets and not _embedded_holds_no_secret(message, 0):
        fields[embedded] = redacted_bytes(len(fields[embedded]))
    return fields


def _redacted_own_fields(message, show_secrets: bool) -> dict:
    """``redacted_fields`` but for an embedded message, which the caller shows its own way."""
    fields = dict(message.fields)
    if show_secrets:
        return fields
    spec = message.spec
    if spec is None:  # an unknown type: its payload may be anything
        payload = fields.get("payload") or b""
        return {**fields, "payload": redacted_bytes(len(payload))}
    for name in spec.secret_fields:
        if fields.get(name) is not None:
            fields[name] = REDACTED
    tlv = spec.tlv
    if tlv is not None:
        for spec_field in spec.fields:
            if spec_field.construct is tlv and isinstance(fields.get(spec_field.name), dict):
                stream = dict(fields[spec_field.name])
                for key, value in stream.items():
                    record = tlv.by_name.get(key) if isinstance(key, str) else None
                    if record is None:
                        stream[key] = redacted_bytes(len(value))  # an unknown record may be anything
                    elif record.secret:
                        stream[key] = REDACTED
                fields[spec_field.name] = stream
    for name in message.quoting_text_fields:
        if isinstance(fields.get(name), str):
            fields[name] = _without_quoted_hex(fields[name])
    return fields


def to_jsonable(message, *, show_secrets: bool = False, max_bytes: int | None = None) -> dict:
    """``{"type", "name", "fields", "trailing"?}`` with bytes as hex and secrets redacted.

    Trailing bytes are shown as hex only with ``show_secrets`` (else ``trailing`` says how many
    were left out). An embedded message is a nested view: ``{"type", "name", "fields", "len"}``
    when it decodes, ``{"type", "len", "undecodable": true}`` (plus ``hex`` with ``show_secrets``)
    when it does not (``too_deep`` instead for a message nested in an embedded one).
    """
    return _view(message, show_secrets, max_bytes, 0)


def _view(message, show_secrets: bool, max_bytes: int | None, depth: int) -> dict:
    fields = _redacted_own_fields(message, show_secrets)
    embedded = message.embedded_field
    if embedded is not None:
        fields[embedded] = _embedded_view(message, embedded, show_secrets, max_bytes, depth)
    out = {"type": message.type, "name": message.name, "fields": _plain(fields, max_bytes)}
    if message.trailing:
        out["trailing"] = message.trailing.hex() if show_secrets else redacted_bytes(len(message.trailing))
    return out


def _embedded_view(message, embedded: str, show_secrets: bool, max_bytes: int | None, depth: int) -> dict:
    body = bytes(message.fields[embedded])
    out = {"type": body_type(body), "len": len(body)}
    if depth + 1 >= MAX_EMBEDDING_DEPTH:
        out["too_deep"] = True
    else:
        try:
            inner = message.embedded_message()
        except ValueError:  # DecodeError
            out["undecodable"] = True
        else:
            return {**_view(inner, show_secrets, max_bytes, depth + 1), "len": len(body)}
    if show_secrets:
        out["hex"] = _plain(body, max_bytes)
    return out
