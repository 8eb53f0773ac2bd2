"""Primitive readers (``p_*``) and writers (``b_*``) of hsmd field types.

Both the interpreted and the compiled construct paths call these, so each field type's
encoding lives in exactly one place. Readers take a BytesIO positioned at the field; writers
take the output stream and the value. Failures raise ``WireValueError`` with a reason; the
schema layer adds the message, field path and offset.
"""

from __future__ import annotations

from .errors import WireValueError

# secp256k1 field prime and group order: a compressed point's x must be < P; compact signature
# halves must be < N (libsecp256k1's parse_compact rejects overflow).
SECP256K1_P = 2**256 - 2**32 - 977
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGHASH_ALL = 0x01
SIGHASH_SINGLE_ANYONECANPAY = 0x83
PSBT_MAGIC = b"psbt\xff"

_from = int.from_bytes


def read_exact(io, n: int) -> bytes:
    data = io.read(n)
    if len(data) != n:
        raise WireValueError(f"needs {n} bytes, only {len(data)} left")
    return data


# -- integers -----------------------------------------------------------------------------

# The readers below inline read_exact: they run for nearly every field, and a call less each
# is most of the codec's speed on messages with many HTLCs.

def p_u8(io) -> int:
    data = io.read(1)
    if len(data) != 1:
        raise WireValueError(f"needs 1 bytes, only {len(data)} left")
    return data[0]


def p_u16(io) -> int:
    data = io.read(2)
    if len(data) != 2:
        raise WireValueError(f"needs 2 bytes, only {len(data)} left")
    return _from(data, "big")


def p_u32(io) -> int:
    data = io.read(4)
    if len(data) != 4:
        raise WireValueError(f"needs 4 bytes, only {len(data)} left")
    return _from(data, "big")


def p_u64(io) -> int:
    data = io.read(8)
    if len(data) != 8:
        raise WireValueError(f"needs 8 bytes, only {len(data)} left")
    return _from(data, "big")


def _uint(value, size: int) -> bytes:
    if type(value) is bool or not isinstance(value, int):
        raise WireValueError(f"expected an integer, got {type(value).__name__}")
    try:
        return value.to_bytes(size, "big")
    except OverflowError:
        raise WireValueError(f"{value} does not fit in u{size * 8}") from None


def b_u8(io, value) -> None:
    io.write(_uint(value, 1))


def b_u16(io, value) -> None:
    io.write(_uint(value, 2))


def b_u32(io, value) -> None:
    io.write(_uint(value, 4))


def b_u64(io, value) -> None:
    io.write(_uint(value, 8))


def _bounded_u8(limit: int, what: str):
    def parse(io) -> int:
        data = io.read(1)
        if not data:
            raise WireValueError("needs 1 bytes, only 0 left")
        value = data[0]
        if value > limit:
            raise WireValueError(f"{what} {value} is not in 0..{limit}")
        return value

    def build(io, value) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
            io.write(bytes((value,)))
        else:
            raise WireValueError(f"{what} must be an integer in 0..{limit}, got {value!r}")

    return parse, build


# enum side: 0 LOCAL (offered by us), 1 REMOTE. log_level: IO_OUT..BROKEN. failreason: MASTER_IO..INTERNAL_ERROR.
p_side, b_side = _bounded_u8(1, "side")
p_log_level, b_log_level = _bounded_u8(6, "log level")
p_failreason, b_failreason = _bounded_u8(3, "status_failreason")


# -- bool and presence --------------------------------------------------------------------

def p_bool(io) -> bool:
    value = read_exact(io, 1)[0]
    if value > 1:
        raise WireValueError(f"bool byte is 0x{value:02x}, only 0x00 or 0x01 allowed")
    return value == 1


def b_bool(io, value) -> None:
    if value is True or value is False or (type(value) is int and value in (0, 1)):
        io.write(b"\x01" if value else b"\x00")
    else:
        raise WireValueError(f"expected a bool, got {value!r}")


# -- fixed-size byte strings --------------------------------------------------------------

def _fixed(size: int):
    def parse(io) -> bytes:
        data = io.read(size)
        if len(data) != size:
            raise WireValueError(f"needs {size} bytes, only {len(data)} left")
        return data

    def build(io, value) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != size:
            raise WireValueError(f"expected {size} bytes, got {_describe(value)}")
        io.write(value)

    return parse, build


def _describe(value) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes"
    return type(value).__name__


p_b32, b_b32 = _fixed(32)
p_b33, b_b33 = _fixed(33)  # node_id: raw; CLN does not validate the point on receipt
p_b64, b_b64 = _fixed(64)
p_b78, b_b78 = _fixed(78)


def _check_pubkey(data: bytes) -> bytes:
    if data[0] not in (2, 3) or _from(data[1:], "big") >= SECP256K1_P:
        raise WireValueError(f"not a compressed secp256k1 point: {data[:4].hex()}...")
    return data


def p_pubkey(io) -> bytes:
    return _check_pubkey(read_exact(io, 33))


def b_pubkey(io, value) -> None:
    b_b33(io, value)
    _check_pubkey(bytes(value))


def _check_compact(data: bytes) -> bytes:
    if _from(data[:32], "big") >= SECP256K1_N or _from(data[32:64], "big") >= SECP256K1_N:
        raise WireValueError("compact signature r or s overflows the group order")
    return data


def p_ecdsa_sig(io) -> bytes:
    return _check_compact(read_exact(io, 64))


def b_ecdsa_sig(io, value) -> None:
    b_b64(io, value)
    _check_compact(bytes(value))


def _check_recoverable(data: bytes) -> bytes:
    _check_compact(data)
    if data[64] > 3:
        raise WireValueError(f"recovery id {data[64]} is not in 0..3")
    return data


def p_recoverable_sig(io) -> bytes:
    return _check_recoverable(read_exact(io, 65))


def b_recoverable_sig(io, value) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 65:
        raise WireValueError(f"expected 65 bytes, got {_describe(value)}")
    _check_recoverable(bytes(value))
    io.write(value)


def _check_bitcoin_sig(data: bytes) -> bytes:
    _check_compact(data)
    if data[64] not in (SIGHASH_ALL, SIGHASH_SINGLE_ANYONECANPAY):
        raise WireValueError(f"sighash byte 0x{data[64]:02x} is neither 0x01 (ALL) nor 0x83 (SINGLE|ANYONECANPAY)")
    return data


def p_bitcoin_sig(io) -> bytes:
    return _check_bitcoin_sig(read_exact(io, 65))


def b_bitcoin_sig(io, value) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 65:
        raise WireValueError(f"expected 65 bytes (compact signature + sighash), got {_describe(value)}")
    _check_bitcoin_sig(bytes(value))
    io.write(value)


# -- variable-length byte strings ---------------------------------------------------------

def p_u16_bytes(io) -> bytes:
    return read_exact(io, _from(read_exact(io, 2), "big"))


def b_u16_bytes(io, value) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise WireValueError(f"expected bytes, got {type(value).__name__}")
    io.write(_uint(len(value), 2))
    io.write(value)


def p_u32_bytes(io) -> bytes:
    return read_exact(io, _from(read_exact(io, 4), "big"))


def b_u32_bytes(io, value) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise WireValueError(f"expected bytes, got {type(value).__name__}")
    io.write(_uint(len(value), 4))
    io.write(value)


def _check_psbt(data: bytes) -> bytes:
    if not data:
        raise WireValueError("PSBT is empty; hsmd requires one")
    if not data.startswith(PSBT_MAGIC):
        raise WireValueError(f"PSBT does not start with the magic 70736274ff: {data[:5].hex()}")
    return data


def p_psbt(io) -> bytes:
    return _check_psbt(p_u32_bytes(io))


def b_psbt(io, value) -> None:
    if not isinstance(value, (bytes, bytearray)):
        raise WireValueError(f"expected PSBT bytes, got {type(value).__name__}")
    _check_psbt(bytes(value))
    b_u32_bytes(io, value)


def p_wirestring(io) -> str:
    data = io.getvalue()
    start = io.tell()
    end = data.find(b"\x00", start)
    if end < 0:
        raise WireValueError("wirestring has no terminating NUL")
    raw = data[start:end]
    if raw and min(raw) < 0x20:
        raise WireValueError("wirestring contains a control byte before its NUL")
    io.seek(end + 1)
    return raw.decode("utf-8", "surrogateescape")


def b_wirestring(io, value) -> None:
    if not isinstance(value, str):
        raise WireValueError(f"expected a str, got {type(value).__name__}")
    raw = value.encode("utf-8", "surrogateescape")
    if raw and min(raw) < 0x20:
        raise WireValueError("wirestring may not contain control characters")
    io.write(raw)
    io.write(b"\x00")


# -- BigSize (BOLT #1), for TLV streams ----------------------------------------------------

def read_bigsize(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise WireValueError("BigSize truncated")
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1
    size, minimum = {0xFD: (2, 0xFD), 0xFE: (4, 0x10000), 0xFF: (8, 0x100000000)}[first]
    end = pos + 1 + size
    if end > len(data):
        raise WireValueError("BigSize truncated")
    value = _from(data[pos + 1 : end], "big")
    if value < minimum:
        raise WireValueError(f"BigSize {value} is not minimally encoded")
    return value, end


def bigsize(value: int) -> bytes:
    if value < 0xFD:
        return bytes((value,))
    if value <= 0xFFFF:
        return b"\xfd" + value.to_bytes(2, "big")
    if value <= 0xFFFFFFFF:
        return b"\xfe" + value.to_bytes(4, "big")
    return b"\xff" + value.to_bytes(8, "big")
