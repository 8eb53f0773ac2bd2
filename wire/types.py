"""hsmd field types as construct Constructs.

Every type parses and builds in two ways that share the readers and writers of ``primitives``:
- compiled (construct's ``.compile()``): the hot path; each type emits a short expression, and a
  ``Record`` emits one function building a plain dict, so no construct ``Container`` is made;
- located (``parse_located`` / ``build_located``): used only after the hot path failed, to name
  the exact field path and byte offset in the error.
"""

from __future__ import annotations

from io import BytesIO

from construct import Construct

from . import primitives
from .errors import WireValueError

_RUNTIME_IMPORT = "from wire.primitives import *"


class Located(Exception):
    """A WireValueError with the field path and byte offset where it happened."""

    def __init__(self, reason: str, path: str, offset: int):
        super().__init__(reason)
        self.reason = reason
        self.path = path
        self.offset = offset


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class WireType(Construct):
    """Base: subclasses provide parse_located/build_located and the emitters."""

    type_name: str = "?"

    def _parse(self, stream, context, path):
        return self.parse_located(stream, "")

    def _build(self, obj, stream, context, path):
        self.build_located(stream, obj, "")
        return obj

    def parse_located(self, io, path: str):
        raise NotImplementedError

    def build_located(self, io, value, path: str) -> None:
        raise NotImplementedError


class Prim(WireType):
    """A leaf type: one reader ``p_<rt>`` and one writer ``b_<rt>`` in ``primitives``."""

    def __init__(self, type_name: str, rt: str):
        super().__init__()
        self.type_name = type_name
        self.rt = rt
        self.parse_fn = getattr(primitives, "p_" + rt)
        self.build_fn = getattr(primitives, "b_" + rt)

    def parse_located(self, io, path):
        start = io.tell()
        try:
            return self.parse_fn(io)
        except WireValueError as exc:
            raise Located(str(exc), path, start) from None

    def build_located(self, io, value, path):
        try:
            self.build_fn(io, value)
        except WireValueError as exc:
            raise Located(str(exc), path, io.tell()) from None

    def _emitparse(self, code):
        code.append(_RUNTIME_IMPORT)
        return f"p_{self.rt}(io)"

    def _emitbuild(self, code):
        code.append(_RUNTIME_IMPORT)
        return f"b_{self.rt}(io, obj)"

    def __repr__(self):
        return f"<{self.type_name}>"


class Optional(WireType):
    """``?T``: a strict presence bool, then T only when present. Absent is None."""

    def __init__(self, subcon: WireType):
        super().__init__()
        self.subcon = subcon
        self.type_name = "?" + subcon.type_name

    def parse_located(self, io, path):
        start = io.tell()
        try:
            present = primitives.p_bool(io)
        except WireValueError as exc:
            raise Located(f"presence byte: {exc}", path, start) from None
        return self.subcon.parse_located(io, path) if present else None

    def build_located(self, io, value, path):
        primitives.b_bool(io, value is not None)
        if value is not None:
            self.subcon.build_located(io, value, path)

    def _emitparse(self, code):
        code.append(_RUNTIME_IMPORT)
        return f"({self.subcon._compileparse(code)} if p_bool(io) else None)"

    def _emitbuild(self, code):
        code.append(_RUNTIME_IMPORT)
        return f"(b_bool(io, obj is not None), ({self.subcon._compilebuild(code)}) if obj is not None else None)"


class Counted(WireType):
    """``T[n]`` where n is the u16 field just before: a list of T (u8 arrays are Prim u16_bytes)."""

    def __init__(self, subcon: WireType):
        super().__init__()
        self.subcon = subcon
        self.type_name = subcon.type_name + "[]"

    def parse_located(self, io, path):
        start = io.tell()
        try:
            count = primitives.p_u16(io)
        except WireValueError as exc:
            raise Located(f"element count: {exc}", path, start) from None
        return [self.subcon.parse_located(io, f"{path}[{i}]") for i in range(count)]

    def build_located(self, io, value, path):
        if not isinstance(value, (list, tuple)):
            raise Located(f"expected a list, got {type(value).__name__}", path, io.tell())
        try:
            primitives.b_u16(io, len(value))
        except WireValueError as exc:
            raise Located(f"too many elements: {exc}", path, io.tell()) from None
        for i, item in enumerate(value):
            self.subcon.build_located(io, item, f"{path}[{i}]")

    def _emitparse(self, code):
        code.append(_RUNTIME_IMPORT)
        return f"[{self.subcon._compileparse(code)} for _ in range(p_u16(io))]"

    def _emitbuild(self, code):
        code.append(_RUNTIME_IMPORT)
        return f"(b_u16(io, len(obj)), [{self.subcon._compilebuild(code)} for obj in obj])"


class Record(WireType):
    """An ordered group of named fields, parsed into a plain dict (messages, subtypes, composites)."""

    def __init__(self, type_name: str, fields: list[tuple[str, WireType]]):
        super().__init__()
        self.type_name = type_name
        self.fields = fields
        self.names = frozenset(name for name, _ in fields)

    def parse_located(self, io, path):
        return {name: sub.parse_located(io, _join(path, name)) for name, sub in self.fields}

    def build_located(self, io, value, path):
        if not isinstance(value, dict):
            raise Located(f"expected a mapping, got {type(value).__name__}", path, io.tell())
        unknown = set(value) - self.names
        if unknown:
            raise Located(f"unknown field(s) {sorted(map(str, unknown))}", path, io.tell())
        for name, sub in self.fields:
            if name not in value:
                raise Located("missing field", _join(path, name), io.tell())
            sub.build_located(io, value[name], _join(path, name))

    def _emitparse(self, code):
        # A dict display evaluates its values left to right, so it reads the fields in order,
        # inline, without a function call per record (this matters for arrays of hsm_htlc).
        items = ", ".join(f"{name!r}: {sub._compileparse(code)}" for name, sub in self.fields)
        return f"{{{items}}}"

    def _emitbuild(self, code):
        fname = f"build_record_{code.allocateId()}"
        lines = [f"def {fname}(obj, io, this):", "    objdict = obj"]
        for name, sub in self.fields:
            lines.append(f"    obj = objdict[{name!r}]")
            lines.append(f"    {sub._compilebuild(code)}")
        lines.append("    return objdict")
        code.append("\n".join(lines) + "\n")
        return f"{fname}(obj, io, this)"


class TlvRecord:
    """One record of a TLV stream: its number, name and value type (its fields)."""

    def __init__(self, name: str, number: int, value: WireType, *, secret: bool = False):
        self.name = name
        self.number = number
        self.value = value
        self.secret = secret


class TlvStream(WireType):
    """A TLV stream: consumes the rest of the message (BigSize type and length, ascending types).

    Known records become ``{name: value}``; unknown odd records are kept as ``{number: bytes}``;
    unknown even records are an error, as in Core Lightning.
    """

    def __init__(self, type_name: str, records: list[TlvRecord]):
        super().__init__()
        self.type_name = type_name
        self.records = records
        self.by_number = {r.number: r for r in records}
        self.by_name = {r.name: r for r in records}

    def parse_located(self, io, path):
        base = io.tell()
        data = io.read()
        out = {}
        pos = 0
        last = -1
        while pos < len(data):
            start = pos
            try:
                number, pos = primitives.read_bigsize(data, pos)
                length, pos = primitives.read_bigsize(data, pos)
            except WireValueError as exc:
                raise Located(f"record header: {exc}", path, base + start) from None
            if number <= last:
                raise Located(f"TLV type {number} after {last}: types must strictly ascend", path, base + start)
            if pos + length > len(data):
                raise Located(f"TLV type {number} claims {length} bytes, {len(data) - pos} left", path, base + start)
            value = data[pos : pos + length]
            record = self.by_number.get(number)
            if record is None:
                if number % 2 == 0:
                    raise Located(f"unknown even TLV type {number}", path, base + start)
                out[number] = value
            else:
                sub = BytesIO(value)
                rpath = _join(path, record.name)
                try:
                    parsed = record.value.parse_located(sub, rpath)
                except Located as exc:
                    raise Located(exc.reason, exc.path, base + pos + exc.offset) from None
                if sub.tell() != len(value):
                    raise Located(f"record has {len(value) - sub.tell()} bytes after its value", rpath, base + start)
                out[record.name] = parsed
            last = number
            pos += length
        return out

    def build_located(self, io, value, path):
        if not isinstance(value, dict):
            raise Located(f"expected a mapping of TLV records, got {type(value).__name__}", path, io.tell())
        encoded = []
        for key, item in value.items():
            record = self.by_name.get(key) if isinstance(key, str) else None
            if record is not None:
                sub = BytesIO()
                record.value.build_located(sub, item, _join(path, key))
                encoded.append((record.number, sub.getvalue()))
            elif isinstance(key, int) and not isinstance(key, bool) and key >= 0:
                if key in self.by_number:
                    raise Located(f"TLV type {key} is known; use its name {self.by_number[key].name!r}", path, io.tell())
                if key % 2 == 0:
                    raise Located(f"unknown even TLV type {key} cannot be sent", path, io.tell())
                if not isinstance(item, (bytes, bytearray)):
                    raise Located(f"unknown TLV type {key} needs raw bytes", path, io.tell())
                encoded.append((key, bytes(item)))
            else:
                raise Located(f"unknown TLV record {key!r}; known: {sorted(self.by_name)}", path, io.tell())
        for number, raw in sorted(encoded):
            io.write(primitives.bigsize(number))
            io.write(primitives.bigsize(len(raw)))
            io.write(raw)

    def _emitparse(self, code):
        code.linkedinstances[id(self)] = self
        return f"linkedinstances[{id(self)}].parse_located(io, '')"

    def _emitbuild(self, code):
        code.linkedinstances[id(self)] = self
        return f"linkedinstances[{id(self)}].build_located(io, obj, '')"


# -- the type table: CSV type name -> construct ---------------------------------------------

def _prim(name: str, rt: str) -> Prim:
    return Prim(name, rt)


u8 = _prim("u8", "u8")
u16 = _prim("u16", "u16")
u32 = _prim("u32", "u32")
u64 = _prim("u64", "u64")
boolean = _prim("bool", "bool")
pubkey = _prim("pubkey", "pubkey")
node_id = _prim("node_id", "b33")
secret = _prim("secret", "b32")
sha256 = _prim("sha256", "b32")
ext_key = _prim("ext_key", "b78")

hsm_utxo = Record(
    "hsm_utxo",
    [
        ("txid", _prim("bitcoin_txid", "b32")),
        ("vout", u32),
        ("amount_sat", _prim("amount_sat", "u64")),
        ("keyindex", u32),
        ("is_p2sh", boolean),  # legacy, always sent as 0
        ("script", _prim("u8[]", "u16_bytes")),
        (
            "close_info",
            Optional(
                Record(
                    "close_info",
                    [
                        ("channel_dbid", u64),
                        ("peer_id", node_id),
                        ("commitment_point", Optional(pubkey)),
                        ("option_anchors", boolean),
                        ("csv", u32),
                    ],
                )
            ),
        ),
        ("is_in_coinbase", boolean),  # legacy, always sent as 0
    ],
)

TYPES: dict[str, WireType] = {
    "u8": u8,
    "u16": u16,
    "u32": u32,
    "u64": u64,
    "bool": boolean,
    "enum side": _prim("enum side", "side"),
    "enum log_level": _prim("enum log_level", "log_level"),
    "enum status_failreason": _prim("enum status_failreason", "failreason"),
    "amount_msat": _prim("amount_msat", "u64"),
    "amount_sat": _prim("amount_sat", "u64"),
    "node_id": node_id,
    "pubkey": pubkey,
    "secret": secret,
    "privkey": _prim("privkey", "b32"),
    "sha256": sha256,
    "bitcoin_txid": _prim("bitcoin_txid", "b32"),
    "chainparams": _prim("chainparams", "b32"),
    "ext_key": ext_key,
    "secp256k1_ecdsa_signature": _prim("secp256k1_ecdsa_signature", "ecdsa_sig"),
    "secp256k1_ecdsa_recoverable_signature": _prim("secp256k1_ecdsa_recoverable_signature", "recoverable_sig"),
    "bitcoin_signature": _prim("bitcoin_signature", "bitcoin_sig"),
    "bip340sig": _prim("bip340sig", "b64"),
    "wirestring": _prim("wirestring", "wirestring"),
    "wally_psbt": _prim("wally_psbt", "psbt"),
    "channel_type": _prim("channel_type", "u16_bytes"),
    "bitcoin_tx": Record("bitcoin_tx", [("tx", _prim("raw_tx", "u32_bytes")), ("psbt", _prim("wally_psbt", "psbt"))]),
    "bip32_key_version": Record("bip32_key_version", [("pubkey_version", u32), ("privkey_version", u32)]),
    "basepoints": Record(
        "basepoints",
        [("revocation", pubkey), ("payment", pubkey), ("htlc", pubkey), ("delayed_payment", pubkey)],
    ),
    "secrets": Record(
        "secrets",
        [
            ("funding_privkey", secret),
            ("revocation_basepoint_secret", secret),
            ("payment_basepoint_secret", secret),
            ("delayed_payment_basepoint_secret", secret),
            ("htlc_basepoint_secret", secret),
        ],
    ),
    "hsm_utxo": hsm_utxo,
}

# Types whose every byte is secret material (field-level redaction follows from the type).
SECRET_TYPES = frozenset({"secret", "privkey", "secrets"})

U8_ARRAY = _prim("u8[]", "u16_bytes")
