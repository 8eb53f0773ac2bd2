"""Hypothesis strategies for every hsmd field type, derived from the codec's own schema."""

from __future__ import annotations

from hypothesis import strategies as st

from wire import primitives
from wire.types import Counted, Optional, Prim, Record, TlvStream, WireType

_P, _N = primitives.SECP256K1_P, primitives.SECP256K1_N


def _scalar_bytes(limit: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, limit - 1).map(lambda v: v.to_bytes(32, "big"))


_compact = st.builds(lambda r, s: r + s, _scalar_bytes(_N), _scalar_bytes(_N))
_wirestring = st.binary(max_size=40).filter(lambda b: not b or min(b) >= 0x20).map(
    lambda b: b.decode("utf-8", "surrogateescape")
)

PRIMS: dict[str, st.SearchStrategy] = {
    "u8": st.integers(0, 2**8 - 1),
    "u16": st.integers(0, 2**16 - 1),
    "u32": st.integers(0, 2**32 - 1),
    "u64": st.integers(0, 2**64 - 1),
    "bool": st.booleans(),
    "side": st.integers(0, 1),
    "log_level": st.integers(0, 6),
    "failreason": st.integers(0, 3),
    "b32": st.binary(min_size=32, max_size=32),
    "b33": st.binary(min_size=33, max_size=33),
    "b64": st.binary(min_size=64, max_size=64),
    "b78": st.binary(min_size=78, max_size=78),
    "pubkey": st.builds(lambda p, x: bytes([p]) + x, st.sampled_from([2, 3]), _scalar_bytes(_P)),
    "ecdsa_sig": _compact,
    "recoverable_sig": st.builds(lambda c, r: c + bytes([r]), _compact, st.integers(0, 3)),
    "bitcoin_sig": st.builds(lambda c, h: c + bytes([h]), _compact, st.sampled_from([0x01, 0x83])),
    "u16_bytes": st.binary(max_size=64),
    "u32_bytes": st.binary(max_size=64),
    "psbt": st.binary(max_size=48).map(lambda b: primitives.PSBT_MAGIC + b),
    "wirestring": _wirestring,
}


def values_for(construct: WireType) -> st.SearchStrategy:
    """A strategy producing valid values of ``construct``."""
    if isinstance(construct, Prim):
        return PRIMS[construct.rt]
    if isinstance(construct, Optional):
        return st.none() | values_for(construct.subcon)
    if isinstance(construct, Counted):
        return st.lists(values_for(construct.subcon), max_size=3)
    if isinstance(construct, Record):
        return st.fixed_dictionaries({name: values_for(sub) for name, sub in construct.fields})
    if isinstance(construct, TlvStream):
        known = st.fixed_dictionaries(
            {}, optional={r.name: values_for(r.value) for r in construct.records}
        )
        unknown_numbers = st.integers(0, 2**64 - 1).filter(
            lambda n: n % 2 == 1 and n not in construct.by_number
        )
        unknown = st.dictionaries(unknown_numbers, st.binary(max_size=16), max_size=2)
        return st.builds(lambda a, b: {**a, **b}, known, unknown)
    raise TypeError(f"no strategy for {construct!r}")


def fields_for(spec) -> st.SearchStrategy[dict]:
    return values_for(spec.record)
