"""The commitment digest's transaction parsing against embit, on random transactions."""

from __future__ import annotations

import pytest
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput
from hypothesis import given, settings, strategies as st

from proxy.core.digest import TxParseError, commitment_digest, funding_outpoint, tx_outputs

scripts = st.binary(max_size=300)
inputs = st.builds(
    lambda txid, vout, sig, seq, wit: TransactionInput(txid, vout, Script(sig), seq, Witness(wit)),
    st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1), scripts, st.integers(0, 2**32 - 1),
    st.lists(st.binary(max_size=80), max_size=3),
)
outputs = st.builds(lambda value, script: TransactionOutput(value, Script(script)), st.integers(0, 2**63 - 1), scripts)
transactions = st.builds(lambda version, vin, vout, lock: Transaction(version, vin, vout, lock),
                         st.integers(1, 3), st.lists(inputs, min_size=1, max_size=4), st.lists(outputs, max_size=300),
                         st.integers(0, 2**32 - 1))


@settings(max_examples=80, deadline=None)
@given(transactions)
def test_outputs_and_funding_outpoint_match_embit(tx):
    raw = tx.serialize()
    parsed = Transaction.parse(raw)
    assert tx_outputs(raw) == [(out.value, out.script_pubkey.data) for out in parsed.vout]
    first = parsed.vin[0]
    assert funding_outpoint(raw) == first.txid[::-1] + first.vout.to_bytes(4, "little")


@settings(max_examples=40, deadline=None)
@given(transactions, st.data())
def test_truncated_transactions_are_named_not_misread(tx, data):
    raw = tx.serialize()
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        outs = tx_outputs(raw[:cut])
    except TxParseError:
        return
    # A prefix can only parse if it ends exactly after the outputs (the rest is witness/locktime).
    assert outs == tx_outputs(raw)[: len(outs)]


def test_digest_covers_what_a_retry_compares():
    tx = Transaction(2, [TransactionInput(bytes(32), 0, Script(b""), 0)],
                     [TransactionOutput(1000, Script(b"\x00\x14" + bytes(20)))], 0).serialize()
    htlc = {"side": 0, "amount": 5_000_000, "payment_hash": bytes(32), "cltv_expiry": 500}
    base = commitment_digest(tx, [htlc], 253, b"\x02" * 33)
    assert commitment_digest(tx, [htlc], 253, b"\x02" * 33) == base
    assert commitment_digest(tx, [dict(htlc, amount=5_000_001)], 253, b"\x02" * 33) != base
    assert commitment_digest(tx, [dict(htlc, cltv_expiry=501)], 253, b"\x02" * 33) != base
    assert commitment_digest(tx, [], 253, b"\x02" * 33) != base
    assert commitment_digest(tx, [htlc], 253, b"\x03" * 33) != base
    other = Transaction(2, [TransactionInput(bytes(32), 0, Script(b""), 0)],
                        [TransactionOutput(1001, Script(b"\x00\x14" + bytes(20)))], 0).serialize()
    assert commitment_digest(other, [htlc], 253, b"\x02" * 33) != base


def test_garbage_is_named():
    with pytest.raises(TxParseError, match="too short"):
        tx_outputs(b"\x02\x00")
