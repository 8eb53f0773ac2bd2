"""A damaged WAL under the shadow hook and the real `hsmproxy wrap` / `serve` (issue 12, item 2).

The issue's case: one bit flipped in the middle of a log of more than a thousand records used to
be cut at the next start as a torn tail, with every valid record after it (the shadow went back
from commitment 184 to 62). A record with a valid checksum but content the shadow cannot replay
used to make `wrap` die with a traceback before it started the signer. Now a start refuses both
with one clear line and exit status 2, and `--wal-repair` starts from what can be replayed,
moving the damaged log aside.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.addons.shadow_hook import ShadowHook
from proxy.core.shadow import (
    SIGNED,
    SIGN_REMOTE,
    VALIDATE_REVOCATION,
    Intent,
    Shadow,
    intent_record,
    outcome_record,
    shadow_to_snapshot,
)
from proxy.core.wal_format import FILE_HEADER, RECORD_HEADER, WalDamaged
from proxy.trio.shadow_recovery import recover
from proxy.trio.wal_store import WalStore
from tests import ld_harness as h
from tests.proxy.addons.wrapped_signer import PERMISSIVE, finish, open_channel, start

pytestmark = pytest.mark.timeout(120)

PEER = b"\x02" * 33
COMMITMENTS = 300  # 1,198 records


def point(n: int) -> bytes:
    return b"\x03" + n.to_bytes(32, "big")


def write_channel_wal(directory: Path, commitments: int = COMMITMENTS, *, bad_record=None,
                      bad_at: int = 0) -> list[int]:
    """One channel signs counterparty commitments 0..n-1 and the peer revokes each older one, as
    channeld does (intent and outcome records). With ``bad_record``, that object is written as
    record ``bad_at`` with a valid checksum. Returns the byte where each record starts."""
    directory.mkdir(exist_ok=True)
    store, _ = WalStore.open(str(directory))
    shadow = Shadow()
    chunks: list[bytes] = []
    for n in range(commitments):
        steps = [(SIGN_REMOTE, n)] + ([(VALIDATE_REVOCATION, n - 1)] if n else [])
        for kind, index in steps:
            digest = n.to_bytes(32, "big") if kind == SIGN_REMOTE else None
            intent, _ = shadow.begin(Intent(0, kind, PEER, 1, index, digest, point(index), 1, index, 10**18))
            shadow.finish(intent.op_id, SIGNED, 10**18)
            for record in (intent_record(intent), outcome_record(intent.op_id, SIGNED, 10**18)):
                if bad_record is not None and len(chunks) == bad_at:
                    chunks.append(store.encode(bad_record))
                chunks.append(store.encode(record))
    assert not shadow.events
    store.write_durably(b"".join(chunks))
    store.close()
    starts, pos = [], FILE_HEADER.size
    for chunk in chunks:
        starts.append(pos)
        pos += len(chunk)
    return starts


def flip_bit(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x20
    path.write_bytes(bytes(data))


def commit_num(shadow) -> int:
    return shadow.channel(PEER, 1).next_counterparty_commit_num


def test_a_flipped_bit_mid_log_refuses_the_start_and_repair_keeps_the_good_prefix(tmp_path, caplog):
    wal = tmp_path / "wal"
    starts = write_channel_wal(wal)
    log = wal / "wal-0.log"
    full, _ = recover(str(wal), repair=False)
    assert commit_num(full) == COMMITMENTS and len(starts) == 1198
    flip_bit(log, starts[600] + RECORD_HEADER.size + 3)
    damaged = log.read_bytes()

    with pytest.raises(WalDamaged) as caught:
        ShadowHook.open(str(wal))
    assert f"wal-0.log is damaged: checksum mismatch in record 600 at byte {starts[600]}" in str(caught.value)
    assert "597 record(s) after it verify" in str(caught.value)
    assert log.read_bytes() == damaged and sorted(os.listdir(wal)) == ["proxy.lock", "wal-0.log"]  # nothing cut, nothing removed

    prefix, recovery = recover(str(wal), repair=False)  # what `hsmproxy state` shows
    assert commit_num(prefix) == 151 and recovery.damage[0].valid_after == 597

    caplog.set_level(logging.WARNING, logger="hsmproxy.shadow")
    hook = ShadowHook.open(str(wal), set_aside_damage=True)
    hook.close()
    assert commit_num(hook.shadow) == 151  # not 300: the records after the damage are not replayed
    (aside,) = [n for n in os.listdir(wal) if ".damaged-" in n]
    assert (wal / aside).read_bytes() == damaged
    said = [r.getMessage() for r in caplog.records if "aside" in r.getMessage()]
    assert len(said) == 1 and f"moved wal-0.log aside to {aside}" in said[0]
    assert "first 600 record(s)" in said[0] and "597 record(s) that verify after it" in said[0]


def state_cli(wal: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hsmproxy.cli", "state", "--wal-dir", str(wal), "--json"],
                          capture_output=True, text=True, env=h.child_env(), timeout=60)


@pytest.mark.parametrize("bad", [[], ["x", 1], ["o", 7], 42],
                         ids=["empty list", "unknown tag", "wrong shape", "not a list"])
def test_state_names_a_record_with_unexpected_content_and_shows_what_precedes_it(tmp_path, bad):
    wal = tmp_path / "wal"
    starts = write_channel_wal(wal, 20, bad_record=bad, bad_at=30)
    done = state_cli(wal)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    assert f"wal-0.log is damaged: record 30 at byte {starts[30]} has a valid checksum but unexpected content" in line
    assert "--wal-repair" in line and "record(s) after it verify" in line
    st = json.loads(done.stdout)
    (damage,) = st["wal"]["damage"]
    assert (damage["kind"], damage["file"], damage["record"]) == ("bad_content", "wal-0.log", 30)
    assert damage["offset"] == starts[30]
    assert damage["valid_records_after"] == len(starts) - 31  # every record but the bad one and those before it
    assert st["wal"]["records"] == 30
    # The shadow shown is exactly the 30 records before it (not a half-applied bad record).
    assert st["channels"][0]["next_counterparty_commit_num"] == 8  # record 30 is the intent of commitment 8


def test_wrap_refuses_to_start_on_bad_content_with_one_line_and_status_2(tmp_path, capfd):
    wal = tmp_path / "wal"
    write_channel_wal(wal, 20, bad_record=[], bad_at=30)
    before = (wal / "wal-0.log").read_bytes()
    ld = start(tmp_path, PERMISSIVE, "--wal-dir", str(wal))
    try:
        assert ld.wait() == 2
        assert ld.read_status_until_eof() == b""  # the signer never started
    finally:
        ld.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("hsmproxy:")]
    assert f"--wal-dir {wal}: wal-0.log is damaged: record 30 at byte" in line
    assert "unexpected content" in line and f"hsmproxy state --wal-dir {wal}" in line and "--wal-repair" in line
    assert (wal / "wal-0.log").read_bytes() == before


def test_wrap_with_wal_repair_starts_from_the_records_before_the_damage(tmp_path, capfd):
    wal = tmp_path / "wal"
    write_channel_wal(wal, 20, bad_record=[], bad_at=30)
    before = (wal / "wal-0.log").read_bytes()
    ld = start(tmp_path, PERMISSIVE, "--wal-dir", str(wal), "--wal-repair")
    try:
        open_channel(ld)
        finish(ld)
    finally:
        ld.close()
    err = capfd.readouterr().err
    assert "moved wal-0.log aside to wal-0.log.damaged-" in err and "first 30 record(s)" in err
    (aside,) = [n for n in os.listdir(wal) if ".damaged-" in n]
    assert (wal / aside).read_bytes() == before
    done = state_cli(wal)
    assert done.returncode == 0 and done.stderr == ""
    st = json.loads(done.stdout)
    assert st["wal"]["damage"] == []
    assert {(c["peer_id"], c["next_counterparty_commit_num"]) for c in st["channels"]} >= {(PEER.hex(), 8)}


def test_serve_refuses_to_start_on_bad_content_with_one_line_and_status_2(tmp_path):
    wal = tmp_path / "wal"
    write_channel_wal(wal, 5, bad_record=["zz", 1], bad_at=3)
    listen = tmp_path / "proxy.sock"
    done = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "serve", "--listen", f"unix:{listen}",
                           "--connect", f"unix:{tmp_path / 'signer.sock'}", "--wal-dir", str(wal)],
                          capture_output=True, text=True, env=h.child_env(), timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert "wal-0.log is damaged: record 3 at byte" in line and "unknown WAL record tag 'zz'" in line
    assert "--wal-repair" in line
    assert not listen.exists()  # the listener it opened is gone again


def test_wal_repair_needs_a_wal_dir(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "serve", "--listen", f"unix:{tmp_path / 'p.sock'}",
                           "--connect", f"unix:{tmp_path / 's.sock'}", "--wal-repair"],
                          capture_output=True, text=True, env=h.child_env(), timeout=60)
    assert done.returncode == 2 and "--wal-repair needs --wal-dir" in done.stderr


def test_a_start_says_which_files_of_other_epochs_it_removes_and_why(tmp_path, caplog):
    """A crash between a checkpoint's renames and its deletions leaves the old epoch's log and
    snapshot: a start removes them (their records are in the newer snapshot) and says so."""
    wal = tmp_path / "wal"
    write_channel_wal(wal, 3)
    old_log = (wal / "wal-0.log").read_bytes()
    hook = ShadowHook.open(str(wal))
    hook.wal.store.checkpoint(hook.wal.store.start_epoch(), shadow_to_snapshot(hook.shadow))
    hook.close()
    (wal / "wal-0.log").write_bytes(old_log)  # as if the crash came before the deletions
    caplog.set_level(logging.WARNING, logger="hsmproxy.shadow")
    hook = ShadowHook.open(str(wal))
    hook.close()
    said = [r.getMessage() for r in caplog.records]
    assert any("removed wal-0.log: its records are in snapshot-1.bin" in m for m in said), said
    assert commit_num(hook.shadow) == 3


def test_a_start_refuses_a_log_whose_snapshot_is_missing_and_keeps_it(tmp_path):
    """It used to start from an empty shadow and delete the log."""
    wal = tmp_path / "wal"
    write_channel_wal(wal, 3)
    hook = ShadowHook.open(str(wal))
    hook.wal.store.checkpoint(hook.wal.store.start_epoch(), shadow_to_snapshot(hook.shadow))
    hook.close()
    write_channel_wal(wal, 4)  # continues epoch 1
    os.unlink(wal / "snapshot-1.bin")
    before = (wal / "wal-1.log").read_bytes()
    with pytest.raises(WalDamaged, match=r"wal-1\.log holds 14 record\(s\) but snapshot-1\.bin"):
        ShadowHook.open(str(wal))
    assert sorted(os.listdir(wal)) == ["proxy.lock", "wal-1.log"] and (wal / "wal-1.log").read_bytes() == before
    hook = ShadowHook.open(str(wal), set_aside_damage=True)
    hook.close()
    (aside,) = [n for n in os.listdir(wal) if n.startswith("wal-1.log.damaged-")]
    assert (wal / aside).read_bytes() == before
