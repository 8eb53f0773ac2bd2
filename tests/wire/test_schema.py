"""The declarations are complete and match Core Lightning's CSV, field for field."""

from __future__ import annotations

import csv
import importlib.util

import wire
from tests.paths import ROOT

ROOT = ROOT
CSV_PATH = ROOT / "wire" / "hsmd_wire.csv"


def _csv_messages() -> dict[str, tuple[int, list[tuple[str, str, str]]]]:
    messages: dict[str, tuple[int, list]] = {}
    rows = csv.reader(line for line in CSV_PATH.read_text().splitlines() if line and not line.startswith("#"))
    for row in rows:
        row = [c.strip() for c in row]
        if row[0] == "msgtype":
            messages[row[1]] = (int(row[2], 0), [])
        elif row[0] == "msgdata":
            messages[row[1]][1].append((row[2], row[3], row[4] if len(row) > 4 else ""))
    return messages


def test_every_csv_message_is_declared_with_its_number():
    csv_messages = _csv_messages()
    assert len(csv_messages) == 89
    for name, (number, _) in csv_messages.items():
        spec = wire.SPECS_BY_NAME[name]
        assert spec.type == number, name
        assert wire.SPECS_BY_TYPE[number] is spec


def test_fields_are_in_csv_order_with_implicit_counts():
    for name, (_, rows) in _csv_messages().items():
        counts = {count for _, _, count in rows if count}
        expected = [(f, t) for f, t, _ in rows if f not in counts]
        declared = [(f.name, f.type_name if not f.name == "tlvs" else f.type_name) for f in wire.SPECS_BY_NAME[name].fields]
        assert declared == expected, name
        for f in wire.SPECS_BY_NAME[name].fields:
            csv_count = next(c for fn, _, c in rows if fn == f.name)
            assert (f.count or "") == csv_count, (name, f.name)


def test_generated_module_is_up_to_date():
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_wire_messages.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.generate(CSV_PATH) == (ROOT / "wire" / "messages.py").read_text(), (
        "wire/messages.py is stale: run python scripts/gen_wire_messages.py > wire/messages.py"
    )


def test_status_messages_are_declared():
    expected = {
        "status_log": 0xFFF0,
        "status_io": 0xFFF1,
        "status_fail": 0xFFF2,
        "status_peer_connection_lost": 0xFFF3,
        "status_peer_billboard": 0xFFF5,
        "status_version": 0xFFF6,
    }
    for name, number in expected.items():
        assert wire.SPECS_BY_NAME[name].type == number


def test_secret_fields_are_marked():
    secret = {(s.name, f) for s in wire.ALL_SPECS for f in s.secret_fields}
    for pair in [
        ("hsmd_ecdh_resp", "ss"),
        ("hsmd_derive_secret_reply", "secret"),
        ("hsmd_revoke_commitment_tx_reply", "old_commitment_secret"),
        ("hsmd_validate_revocation", "per_commitment_secret"),
        ("hsmd_sign_penalty_to_us", "revocation_secret"),
        ("hsmd_sign_any_penalty_to_us", "revocation_secret"),
        ("hsmd_check_future_secret", "commitment_secret"),
        ("hsmd_get_per_commitment_point_reply", "old_commitment_secret"),
        ("hsmd_validate_commitment_tx_reply", "old_commitment_secret"),
        ("hsmd_init", "hsm_encryption_key"),
        ("hsmd_init", "dev_force_privkey"),
        ("hsmd_init", "dev_force_bip32_seed"),
        ("hsmd_init", "dev_force_channel_secrets"),
        ("hsmd_init", "dev_force_channel_secrets_shaseed"),
    ]:
        assert pair in secret, pair
    passphrase = wire.SPECS_BY_NAME["hsmd_init"].tlv.by_name["hsm_passphrase"]
    assert passphrase.secret
    # and nothing public is hidden
    assert not wire.SPECS_BY_NAME["hsmd_sign_remote_commitment_tx"].secret_fields
