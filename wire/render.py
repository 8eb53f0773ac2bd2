"""Messages as JSON-friendly data for people and machines, with secrets redacted by default."""

from __future__ import annotations

REDACTED = "<redacted>"


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


def redacted_fields(message, show_secrets: bool = False) -> dict:
    """The message's fields with secret values replaced (None stays None: absence is not secret)."""
    fields = dict(message.fields)
    if show_secrets or message.spec is None:
        return fields
    for name in message.spec.secret_fields:
        if fields.get(name) is not None:
            fields[name] = REDACTED
    tlv = message.spec.tlv
    if tlv is not None:
        for spec_field in message.spec.fields:
            if spec_field.construct is tlv and isinstance(fields.get(spec_field.name), dict):
                stream = dict(fields[spec_field.name])
                for record in tlv.records:
                    if record.secret and record.name in stream:
                        stream[record.name] = REDACTED
                fields[spec_field.name] = stream
    return fields


def to_jsonable(message, *, show_secrets: bool = False, max_bytes: int | None = None) -> dict:
    """``{"type", "name", "fields", "trailing"?}`` with bytes as hex and secrets redacted."""
    out = {
        "type": message.type,
        "name": message.name,
        "fields": _plain(redacted_fields(message, show_secrets), max_bytes),
    }
    if message.trailing:
        out["trailing"] = message.trailing.hex()
    return out
