"""`hsmproxy state`: JSON keys, tables, the peer filter, in-doubt intents, and read-only access."""

from __future__ import annotations

import json
import os
import shutil

from hsmproxy import cli
from proxy.core.shadow import SIGNED, SIGN_REMOTE, Intent, Shadow, intent_record, outcome_record, shadow_to_snapshot
from proxy.core.wal_format import FILE_HEADER, RECORD_HEADER, encode_record
from proxy.trio.wal_store import WalStore
from tests.paths import TESTS

WAL_V1 = TESTS / "fixtures" / "wal-v1"  # written by commit 4c14c53, before wal.py and shadow.py were split
PEER_A, PEER_B = b"\x02" + b"\xaa" * 32, b"\x03" + b"\xbb" * 32


def write_wal(directory: str, *, stranded: bool = False) -> None:
    """Channel A signs 0 and 1, then re-signs 1 with other contents; channel B signs 0."""
    store, _ = WalStore.open(directory)
    shadow = Shadow()
    ops = [(PEER_A, 1, 0, b"a0"), (PEER_A, 1, 1, b"a1"), (PEER_A, 1, 1, b"a1-changed"), (PEER_B, 7, 0, b"b0")]
    data = []
    for peer, dbid, n, tag in ops:
        intent, _ = shadow.begin(Intent(0, SIGN_REMOTE, peer, dbid, n, tag.ljust(32, b"."), b"\x02" * 33, 1, n, 10**18))
        data.append(store.encode(intent_record(intent)))
        shadow.finish(intent.op_id, SIGNED, 10**18 + 1)
        data.append(store.encode(outcome_record(intent.op_id, SIGNED, 10**18 + 1)))
    if stranded:  # sent to the signer, then the proxy died
        intent, _ = shadow.begin(Intent(0, SIGN_REMOTE, PEER_B, 7, 1, b"b1".ljust(32, b"."), b"\x02" * 33, 1, 9))
        data.append(store.encode(intent_record(intent)))
    store.write_durably(b"".join(data))
    store.close()


def run_json(capsys, *argv) -> dict:
    assert cli.main(["state", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_the_documented_keys(tmp_path, capsys):
    write_wal(str(tmp_path))
    st = run_json(capsys, "--wal-dir", str(tmp_path))
    assert [(c["peer_id"], c["dbid"]) for c in st["channels"]] == [(PEER_A.hex(), 1), (PEER_B.hex(), 7)]
    for channel in st["channels"]:
        assert {"peer_id", "dbid", "next_counterparty_commit_num", "next_counterparty_revoke_num",
                "next_holder_commit_num"} <= channel.keys()
    a = st["channels"][0]
    assert (a["next_counterparty_commit_num"], a["next_counterparty_revoke_num"], a["next_holder_commit_num"]) == (2, 0, None)
    kinds = [(d["kind"], d["peer_id"], d["dbid"], d["index"], d["status"]) for d in st["divergences"]]
    assert kinds == [("retry_changed", PEER_A.hex(), 1, 1, "confirmed"), ("double_signed", PEER_A.hex(), 1, 1, "confirmed")]
    assert st["divergences"][0]["shadow_digest"] == b"a1".ljust(32, b".").hex()
    assert st["wal"]["records"] == 8 and st["wal"]["invalid_tail"] is None


def test_peer_filter(tmp_path, capsys):
    write_wal(str(tmp_path))
    st = run_json(capsys, "--wal-dir", str(tmp_path), "--peer", PEER_B.hex()[:10])
    assert [c["dbid"] for c in st["channels"]] == [7] and st["divergences"] == []


def test_a_dead_proxys_torn_tail_is_reported_and_left_alone(tmp_path, capsys):
    write_wal(str(tmp_path), stranded=True)
    log = tmp_path / "wal-0.log"
    with open(log, "ab") as f:
        f.write(encode_record(0, 9, ["o", 5, "signed", 0, ""])[:-2])  # torn mid-write
    before = log.read_bytes()
    st = run_json(capsys, "--wal-dir", str(tmp_path))
    assert log.read_bytes() == before  # read-only, even with a tail to cut
    assert st["wal"]["invalid_tail_bytes"] > 0 and "torn" in st["wal"]["invalid_tail"]
    assert [(i["kind"], i["dbid"], i["index"]) for i in st["in_flight"]] == [("sign_remote_commitment", 7, 1)]


def test_tables_name_the_events(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    write_wal(str(tmp_path), stranded=True)
    assert cli.main(["state", "--wal-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Channels (2)" in out and "Divergence events (2)" in out
    assert "double_signed" in out and "retry_changed" in out and "answer not recorded" in out


def test_an_empty_directory_is_an_empty_state(tmp_path, capsys):
    st = run_json(capsys, "--wal-dir", str(tmp_path))
    assert st["channels"] == [] and st["divergences"] == [] and os.listdir(tmp_path) == []


def test_a_foreign_file_is_named(tmp_path, capsys):
    (tmp_path / "wal-0.log").write_bytes(b"not a wal at all" * 4)
    assert cli.main(["state", "--wal-dir", str(tmp_path)]) == 2
    assert "not an hsmproxy WAL file" in capsys.readouterr().err


def test_files_written_by_the_proxy_are_private(tmp_path):
    write_wal(str(tmp_path))
    assert {oct(os.stat(tmp_path / n).st_mode & 0o777) for n in os.listdir(tmp_path)} == {oct(0o600)}


def test_a_wal_written_by_an_earlier_version_shows_the_same_state(tmp_path, capsys):
    """tests/fixtures/wal-v1 holds a snapshot (channels, events, an intent in flight, intents in
    doubt, recently unanswered ones) and the log after it (outcomes, a restart, a refusal), and
    wal-v1.state.json what `hsmproxy state --json` showed for it then."""
    shutil.copytree(WAL_V1, tmp_path / "wal")
    st = run_json(capsys, "--wal-dir", str(tmp_path / "wal"))
    assert st["wal"].pop("damage") == []  # added since: what could not be replayed
    expected = json.loads((TESTS / "fixtures" / "wal-v1.state.json").read_text())
    assert st == dict(expected, wal_dir=str(tmp_path / "wal"))
    assert st["divergences"] and st["in_doubt"] and st["wal"] == {"epoch": 2, "records": 7, "invalid_tail_bytes": 0,
                                                                   "invalid_tail": None}


# --- a damaged WAL (issue 12, item 2): shown as far as it replays, with what could not be read ---


def record_starts(path) -> list[int]:
    data = path.read_bytes()
    starts, pos = [], FILE_HEADER.size
    while pos < len(data):
        starts.append(pos)
        pos += RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, pos)[0]
    return starts


def test_a_damaged_log_is_shown_up_to_the_damage_and_says_what_it_could_not_read(tmp_path, capsys, monkeypatch):
    write_wal(str(tmp_path))
    log = tmp_path / "wal-0.log"
    at = record_starts(log)[3]
    data = bytearray(log.read_bytes())
    data[at + RECORD_HEADER.size + 1] ^= 0x01  # a flipped bit in record 3 of 8
    log.write_bytes(bytes(data))
    assert cli.main(["state", "--wal-dir", str(tmp_path), "--json"]) == 1
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith("hsmproxy state: WAL DAMAGED: wal-0.log is damaged: ")
    assert f"checksum mismatch in record 3 at byte {at}" in line
    assert "4 record(s) after it verify" in line and "stops before record 3 of wal-0.log" in line
    st = json.loads(out)
    assert st["wal"]["records"] == 3 and st["wal"]["invalid_tail"] is None  # not a torn tail
    (damage,) = st["wal"]["damage"]
    assert (damage["kind"], damage["offset"], damage["record"], damage["valid_records_after"]) == ("corrupt", at, 3, 4)
    assert log.read_bytes() == bytes(data)
    monkeypatch.setenv("COLUMNS", "220")
    assert cli.main(["state", "--wal-dir", str(tmp_path)]) == 1
    assert "DAMAGED: wal-0.log is damaged: checksum mismatch" in capsys.readouterr().out



def test_the_pytest_plugins_state_is_what_the_state_command_shows_damage_included(tmp_path, capsys):
    from hsmproxy.pyln_session import ProxiedNode  # the hsmproxy(node) fixture's handle

    node = ProxiedNode("l1", tmp_path / "hsmproxy")
    write_wal(str(node.wal_dir))
    log = node.wal_dir / "wal-0.log"
    data = bytearray(log.read_bytes())
    data[record_starts(log)[3] + RECORD_HEADER.size + 1] ^= 0x01
    log.write_bytes(bytes(data))
    assert cli.main(["state", "--wal-dir", str(node.wal_dir), "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["wal"]["damage"] and json.loads(json.dumps(node.state())) == shown

def test_a_log_whose_snapshot_is_missing_is_an_error_not_an_empty_shadow(tmp_path, capsys):
    store, _ = WalStore.open(str(tmp_path))
    store.checkpoint(store.start_epoch(), shadow_to_snapshot(Shadow()))
    store.close()
    write_wal(str(tmp_path))  # the store continues epoch 1: wal-1.log
    os.unlink(tmp_path / "snapshot-1.bin")
    assert cli.main(["state", "--wal-dir", str(tmp_path), "--json"]) == 1
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert "wal-1.log holds 8 record(s) but snapshot-1.bin, the state they apply to, is missing" in line
    (damage,) = json.loads(out)["wal"]["damage"]
    assert (damage["kind"], damage["file"], damage["valid_records_after"]) == ("no_snapshot", "wal-1.log", 8)
    assert sorted(os.listdir(tmp_path)) == ["proxy.lock", "wal-1.log"]  # read-only

