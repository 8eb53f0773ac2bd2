"""`hsmproxy chaos` end to end: real node, proxy and signer processes, the write-up's stories."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path
from xml.etree import ElementTree

import trio

from tests.chaos.helpers import CLI, chaos, command_line

def permissive_signer(tmp_path: Path) -> Path:
    """Our signer with every VLS rule turned into a warning: it signs whatever it is asked, as stock
    lightning_hsmd does (which is not installed here)."""
    path = tmp_path / "stock-like-hsmd"
    path.write_text(f"#!/bin/sh\nVLS_PERMISSIVE=1 exec {shlex.join([*CLI, 'sim-signer'])} \"$@\"\n")
    path.chmod(0o700)
    return path


def kinds(run: dict) -> set[str]:
    return {d["kind"] for d in run["divergences"] if d["status"] not in ("refuted", "prevented")}


async def test_the_three_stories_show_what_the_write_up_claims(tmp_path):
    code, out, err = await chaos("--jobs", "2", "--json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "j.xml"))
    assert code == 0, out + err
    runs = {(r["scenario"], r["signer_policy"]): r for r in json.loads((tmp_path / "r.json").read_text())["runs"]}
    assert set(runs) == {("honest-crash", "enforce"), ("pretend-crash", "enforce"), ("pretend-crash", "warn"),
                         ("wal-fix", "enforce")}

    honest = runs[("honest-crash", "enforce")]
    assert honest["outcome"] == "stuck" and honest["restarts"] == 1
    assert [f["action"] for f in honest["faults"]] == ["kill-node"]
    assert honest["faults"][0]["point"] == "reply.before_forward"  # the signer signed, the node never saw it
    assert {"retry_changed", "signer_rejected"} <= kinds(honest) and "double_signed" not in kinds(honest)
    assert honest["signer_rejections"] == ["policy-commitment-retry-same"]
    # The crash in the window was flagged when the node died, and the changed retry confirmed it.
    (crash,) = [d for d in honest["divergences"] if d["kind"] == "crashed_in_window"]
    assert (crash["status"], crash["index"]) == ("confirmed", 1)
    assert honest["divergences"][0] == crash  # flagged first: at the crash, before the node came back
    assert "it had lost 1" in crash["detail"] and "retry_changed" in crash["detail"]

    refused = runs[("pretend-crash", "enforce")]
    assert (refused["outcome"], refused["funds_lost_msat"]) == ("refused", 0)
    assert refused["signer_rejections"] == ["policy-commitment-retry-same"]

    stolen = runs[("pretend-crash", "warn")]
    assert stolen["outcome"] == "funds_lost" and stolen["funds_lost_msat"] > 0
    assert {"retry_changed", "double_signed"} <= kinds(stolen) and stolen["signer_rejections"] == []

    fixed = runs[("wal-fix", "enforce")]
    assert (fixed["outcome"], fixed["restarts"]) == ("converged", 1)
    # The only event: the crash in the window, resolved by the identical retry of the WAL node.
    assert [(d["kind"], d["status"], d["index"]) for d in fixed["divergences"]] == [("crashed_in_window", "resolved", 1)]
    assert "the same contents" in fixed["divergences"][0]["detail"]

    for run in runs.values():
        assert run["ok"] and run["invariant_violations"] == [] and run["reproduce"].startswith("hsmproxy chaos ")
    assert "write-up's stories" in out and "retry_changed" in out and "funds_lost" in out
    assert ElementTree.parse(tmp_path / "j.xml").getroot().get("failures") == "0"


async def test_with_a_non_validating_signer_honest_crash_double_signs(tmp_path):
    signer = permissive_signer(tmp_path)
    code, out, err = await chaos("--scenario", "honest-crash", "--signer", str(signer), "--json", str(tmp_path / "r.json"))
    assert code == 0, out + err
    (run,) = json.loads((tmp_path / "r.json").read_text())["runs"]
    # The signer signed commitment 1 twice; only the proxy saw it. The honest peer steals nothing.
    assert run["outcome"] == "converged" and "double_signed" in kinds(run) and run["signer_rejections"] == []
    assert any(d["kind"] == "double_signed" and d["status"] == "confirmed" for d in run["divergences"])
    assert run["reproduce"] == f"hsmproxy chaos --scenario honest-crash --seeds 1..1 --signer {signer}"


async def test_a_violated_invariant_fails_the_session_with_its_seed_and_replay_command(tmp_path):
    """A signer that claims to enforce VLS's rules but signs commitment 1 twice."""
    signer = permissive_signer(tmp_path)
    code, out, err = await chaos("--scenario", "pretend-crash", "--seeds", "3..3", "--signer", str(signer),
                                 "--signer-validates", "--json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "j.xml"))
    assert code == 1, out + err
    (run,) = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert run["outcome"] == "invariant_violated" and run["seed"] == 3 and not run["ok"]
    assert {v["invariant"] for v in run["invariant_violations"]} == {"enforcing-signer-never-double-signs"}
    replay = f"hsmproxy chaos --scenario pretend-crash --seeds 3..3 --signer {signer} --signer-validates"
    assert run["reproduce"] == replay
    assert "seed 3" in err and replay in err  # said as it happens
    assert "failed runs" in out and f"replay seed 3: {replay}" in out  # and in the final report
    failure = ElementTree.parse(tmp_path / "j.xml").getroot().find("testcase/failure")
    assert replay in failure.text
    assert Path(run["workdir"], "logs").is_dir()  # a failed run keeps its evidence


async def test_bad_arguments_are_named(tmp_path):
    code, _, err = await chaos("--seeds", "9..2", timeout=30)
    assert code == 2 and "--seeds '9..2'" in err
    code, _, err = await chaos("--signer", str(tmp_path / "nope"), timeout=30)
    assert code == 2 and "not an executable file" in err


async def test_a_metrics_address_that_cannot_be_served_is_one_line_and_exit_2(tmp_path):
    """Refused before any run starts, in one line naming the address (not a trio traceback)."""
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        for address, why in ((f"unix:{tmp_path / 'no-such-dir' / 'm.sock'}", "No such file or directory"),
                             (busy, "cannot listen on"), ("192.0.2.1:9464", "not a loopback address"),
                             ("nonsense", "is not unix:PATH or [tcp:]HOST:PORT")):
            code, out, err = await chaos("--seeds", "1..1", "--metrics", address, timeout=30)
            assert code == 2, out + err
            (line,) = err.splitlines()
            assert line.startswith(f"hsmproxy chaos: --metrics {address}: ") and why in line, line
            assert "Traceback" not in err and "run(s)" not in out  # no run started
    finally:
        taken.close()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


async def test_sigterm_stops_the_session_and_leaves_no_process(tmp_path):
    workdir = tmp_path / "runs"
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process([*CLI, "chaos", "--no-live", "--scenario", "wal-fix", "--workdir",
                                                 str(workdir)])
        try:
            while not any("--wal-dir" in command_line(pid) for pid in _processes_mentioning(str(workdir))):
                await trio.sleep(0.05)  # until the node has started the proxy in front of its signer
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 130
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert _processes_mentioning(str(workdir)) == []


async def _interrupt_once_running(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    """Start a session with its temporary directories under tmp_path, wait until its first run's
    proxy is up, press Ctrl-C (SIGINT), and return the exit status, stderr and the temp dir."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process([*CLI, "chaos", "--no-live", "--scenario", "wal-fix", *args],
                                                env=dict(os.environ, TMPDIR=str(temp)), stderr=-1)
        try:
            while not any("--wal-dir" in command_line(pid) for pid in _processes_mentioning(str(temp))):
                await trio.sleep(0.05)  # until the node has started the proxy in front of its signer
            proc.send_signal(signal.SIGINT)
            err = await proc.stderr.receive_some(1 << 20) or b""
            while chunk := await proc.stderr.receive_some(1 << 20):
                err += chunk
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert _processes_mentioning(str(temp)) == []
    return code, err.decode(), temp


async def test_ctrl_c_exits_130_and_removes_the_run_it_stopped(tmp_path):
    code, err, temp = await _interrupt_once_running(tmp_path)
    assert code == 130 and "Traceback" not in err, err
    assert "interrupted (SIGINT): 0 of 1 run(s) finished" in err and "its directory was removed" in err
    assert list(temp.iterdir()) == []  # no hsm_secret, WAL or trace left behind


async def test_ctrl_c_with_keep_all_says_where_the_stopped_run_is(tmp_path):
    code, err, temp = await _interrupt_once_running(tmp_path, "--keep", "all")
    assert code == 130 and "Traceback" not in err, err
    (kept,) = temp.iterdir()
    assert f"its directory is kept (--keep all): {kept}" in " ".join(err.split())
    assert (kept / "logs").is_dir() and (kept / "node").is_dir()
