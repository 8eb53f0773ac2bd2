"""The ``bitcoin_tx`` field hsmd carries: a raw tx plus a v0 PSBT whose input holds the spent
output (the signer reads the amount to sign from there)."""

from __future__ import annotations

from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import Transaction, TransactionOutput


def bitcoin_tx(tx: Transaction, spent_value_sat: int, spent_script_pubkey: bytes, witness_script: bytes | None = None) -> dict:
    psbt = PSBT(tx)
    psbt.inputs[0].witness_utxo = TransactionOutput(spent_value_sat, Script(spent_script_pubkey))
    if witness_script is not None:
        psbt.inputs[0].witness_script = Script(witness_script)
    return {"tx": tx.serialize(), "psbt": psbt.serialize()}


def spent_output(field: dict) -> tuple[Transaction, int, bytes]:
    """(tx, value_sat, scriptPubKey) of input 0 from a decoded bitcoin_tx field.

    Raises ValueError when the PSBT does not describe input 0's spent output."""
    tx = Transaction.parse(field["tx"])
    try:
        psbt = PSBT.parse(field["psbt"])
    except Exception as exc:  # embit raises several types for bad PSBTs
        raise ValueError(f"unreadable PSBT: {exc}") from None
    if not psbt.inputs or psbt.inputs[0].witness_utxo is None:
        raise ValueError("PSBT input 0 has no witness_utxo (the amount being spent)")
    utxo = psbt.inputs[0].witness_utxo
    return tx, utxo.value, utxo.script_pubkey.data
