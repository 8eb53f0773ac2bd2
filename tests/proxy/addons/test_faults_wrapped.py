"""Every fault action against a running proxy: real `hsmproxy wrap` processes, a real signer
process (tests/hsmd_like.py, answering with real hsmd bytes), real socketpairs and fd passing,
and a lightningd stand-in that is a process of its own (tests/faults_node.py), so kill-node can
kill it as it would kill lightningd, the wrapper's parent."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import trio

import wire
from hsmproxy.control_client import ControlClient
from proxy.addons.fault_hook import CRASH_EXIT_CODE
from proxy.addons.trace import read_trace
from tests import ld_harness as h
from tests.paths import CHANNELD_EXCHANGES, ROOT, TESTS

pytestmark = pytest.mark.timeout(120)

NODE = TESTS / "faults_node.py"
EXCHANGES = json.loads(CHANNELD_EXCHANGES.read_text())["exchanges"]
REPLIES = [e["reply"] for e in EXCHANGES]
SIGN_REMOTE = 3  # the first hsmd_sign_remote_commitment_tx in the channeld exchanges
POINTS = ("request.before_forward", "request.after_forward", "reply.before_forward", "reply.after_forward")


class Run:
    """One lightningd stand-in + wrapper + signer; its JSON lines as they arrive."""

    def __init__(self, tmp: Path, *wrap_args: str, timeout: float = 0.5, enable: bool = True):
        self.tmp = tmp
        self.control = f"unix:{tmp / 'control.sock'}"
        signer = h.hsmd_like_script(tmp)
        # wrapper_script puts each option in double quotes, where sh would expand "$hsmd_..."
        args = ["--control", self.control, "--fault-seed", "7", *(a.replace("$", "\\$") for a in wrap_args)]
        if enable:
            args.insert(0, "--enable-faults")
        self.argv = [sys.executable, str(NODE), str(tmp), str(timeout), "--", str(h.wrapper_script(tmp, signer, *args))]
        self.lines: list[dict] = []
        self.proc = None
        self.wrapper_pid = None

    async def __aenter__(self):
        self.proc = await trio.lowlevel.open_process(self.argv, stdout=-1, stderr=-1, env=h.child_env(), cwd=self.tmp)
        self._buf = b""
        self.wrapper_pid = (await self.next())["wrapper_pid"]
        return self

    async def __aexit__(self, *exc):
        for pid in (self.proc.pid, self.wrapper_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass
        await self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            await stream.aclose()
        await trio.to_thread.run_sync(_wait_gone, self.wrapper_pid)

    async def next(self) -> dict | None:
        while b"\n" not in self._buf:
            data = await self.proc.stdout.receive_some(65536)
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        record = json.loads(line)
        self.lines.append(record)
        return record

    async def finish(self) -> dict:
        """Read to the end; the steps by index, and the tail records."""
        while await self.next() is not None:
            pass
        self.stderr = (await self.proc.stderr.receive_some(1 << 20) or b"").decode()
        self.returncode = await self.proc.wait()
        return self.steps()

    def steps(self) -> dict:
        return {r["step"]: r for r in self.lines if "step" in r}

    def tail(self, key):
        return next((r[key] for r in self.lines if key in r), None)

    def client(self) -> ControlClient:
        return ControlClient(self.control, timeout=2)


def _wait_gone(pid) -> None:
    import time

    if pid is None:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.02)


async def run_plan(tmp, plan: str, timeout=0.5, extra=()) -> Run:
    with trio.fail_after(60):
        async with Run(tmp, f"--faults={plan}", *extra, timeout=timeout) as run:
            await run.finish()
    return run


def replies(run) -> list:
    steps = run.steps()
    return [steps[i]["hex"] if steps[i]["result"] == "reply" else steps[i]["result"] for i in range(len(EXCHANGES))]


# ---- verdict actions (at their before_forward points) --------------------------------------------


async def test_no_faults_is_byte_for_byte(tmp_path):
    with trio.fail_after(60):
        async with Run(tmp_path, enable=False) as run:
            await run.finish()
    assert replies(run) == REPLIES and run.tail("exit") == 2  # hsmd exits 2 when the master closes


async def test_drop_request_the_signer_never_sees_it(tmp_path):
    run = await run_plan(tmp_path, "$hsmd_sign_remote_commitment_tx")
    got = replies(run)
    assert got[SIGN_REMOTE] == "timeout"
    assert got[:SIGN_REMOTE] + got[SIGN_REMOTE + 1:] == REPLIES[:SIGN_REMOTE] + REPLIES[SIGN_REMOTE + 1:]


async def test_drop_reply_the_signer_acted_the_node_never_hears(tmp_path):
    trace = tmp_path / "t.trace"
    run = await run_plan(tmp_path, "$hsmd_sign_remote_commitment_tx@reply", extra=("--trace", str(trace)))
    assert replies(run)[SIGN_REMOTE] == "timeout"
    signed = [r for r in read_trace(str(trace)) if r["kind"] == "frame" and r["dir"] == "reply" and r["verdict"] == "Drop"]
    assert [r["raw"].hex() for r in signed] == [REPLIES[SIGN_REMOTE]]  # the signer did sign


async def test_duplicate_request_gets_two_replies(tmp_path):
    run = await run_plan(tmp_path, "&hsmd_sign_remote_commitment_tx")
    got = replies(run)
    # The node reads one reply per request, so from the duplicate on it is one behind.
    assert got[SIGN_REMOTE] == got[SIGN_REMOTE + 1] == REPLIES[SIGN_REMOTE]
    assert got[SIGN_REMOTE + 2:] == REPLIES[SIGN_REMOTE + 1:-1] and run.tail("extra") == [REPLIES[-1]]


async def test_duplicate_reply(tmp_path):
    run = await run_plan(tmp_path, "&hsmd_sign_remote_commitment_tx@reply")
    got = replies(run)
    assert got[SIGN_REMOTE] == got[SIGN_REMOTE + 1] == REPLIES[SIGN_REMOTE]
    assert run.tail("extra") == [REPLIES[-1]]


async def test_corrupt_bitflip_reply(tmp_path):
    run = await run_plan(tmp_path, "%hsmd_sign_remote_commitment_tx")
    got = bytes.fromhex(replies(run)[SIGN_REMOTE])
    want = bytes.fromhex(REPLIES[SIGN_REMOTE])
    flipped = [a ^ b for a, b in zip(got, want) if a != b]
    assert len(got) == len(want) and len(flipped) == 1 and bin(flipped[0]).count("1") == 1


async def test_corrupt_request_bitflip(tmp_path):
    # The signer gets a changed check_outpoint: it has no answer for it and refuses, as hsmd does.
    run = await run_plan(tmp_path, "%hsmd_check_outpoint@req")
    assert replies(run)[0] == "eof"
    assert any(wire.decode(bytes.fromhex(f)).name == "hsmstatus_client_bad_request" for f in run.tail("status"))


async def test_corrupt_stale_per_commitment_point(tmp_path):
    run = await run_plan(tmp_path, "%hsmd_get_per_commitment_point*2 mode=stale")
    got = replies(run)
    first, second = [i for i, e in enumerate(EXCHANGES) if e["name"] == "hsmd_get_per_commitment_point"]
    assert got[second] == REPLIES[first] != REPLIES[second]
    assert wire.decode(bytes.fromhex(got[second])).name == "hsmd_get_per_commitment_point_reply"  # well-formed


@pytest.mark.parametrize("plan, point", [("-hsmd_sign_remote_commitment_tx", "request"), ("+hsmd_sign_remote_commitment_tx", "reply")])
async def test_disconnect_closes_the_client_both_ways(tmp_path, plan, point):
    trace = tmp_path / "t.trace"
    run = await run_plan(tmp_path, plan, extra=("--trace", str(trace)))
    got = replies(run)
    assert got[:SIGN_REMOTE] == REPLIES[:SIGN_REMOTE]
    assert got[SIGN_REMOTE] == "eof" and set(got[SIGN_REMOTE + 1:]) <= {"send_failed", "eof"}
    signer_saw = [r for r in read_trace(str(trace)) if r["kind"] == "frame" and r["dir"] == "reply"
                  and r["conn"].get("dbid") == 1]
    assert len(signer_saw) == SIGN_REMOTE + (point == "reply")
    assert run.tail("exit") == 2  # the master and the signer carried on until the node closed


async def test_reject_answers_as_a_refusing_hsmd(tmp_path):
    run = await run_plan(tmp_path, "?hsmd_sign_remote_commitment_tx description=chaos-says-no")
    got = replies(run)
    assert got[SIGN_REMOTE] == "eof" and got[:SIGN_REMOTE] == REPLIES[:SIGN_REMOTE]
    bad = [wire.decode(bytes.fromhex(f)) for f in run.tail("status")]
    bad = [m for m in bad if m.name == "hsmstatus_client_bad_request"]
    assert len(bad) == 1 and bad[0].fields["description"] == "chaos-says-no"
    assert bad[0].fields["msg"] == bytes.fromhex(EXCHANGES[SIGN_REMOTE]["request"])


async def test_hold_until_released_through_the_api(tmp_path):
    with trio.fail_after(60):
        async with Run(tmp_path, "--faults=0hsmd_sign_remote_commitment_tx", timeout=20) as run:
            while (await run.next()).get("step") != SIGN_REMOTE - 1:
                pass
            client = run.client()
            held = []
            while not held:
                held = await trio.to_thread.run_sync(client.held)
            assert held[0]["message"] == "hsmd_sign_remote_commitment_tx" and held[0]["seq"] == SIGN_REMOTE
            # The control API answers at once while the message is held; the node still waits.
            with trio.fail_after(2):
                assert (await trio.to_thread.run_sync(client.health))["held"] == 1
            with trio.move_on_after(0.3):
                await run.next()
            assert SIGN_REMOTE not in run.steps()
            assert await trio.to_thread.run_sync(client.release) == [held[0]["id"]]
            await run.finish()
    assert replies(run) == REPLIES


@pytest.mark.parametrize("point", POINTS)
async def test_delay_at_every_point(tmp_path, point):
    """Before forwarding, the message itself waits; after forwarding, the hook holds that
    direction of the connection, so what comes next on it waits. Bounded by cause and effect on
    the node's own clock: the delay starts after the node sent SIGN_REMOTE."""
    with trio.fail_after(60):
        async with Run(tmp_path, f"--faults=~hsmd_sign_remote_commitment_tx@{point} ms=300") as run:
            while await run.next() is not None:
                pass
            await run.finish()
    assert replies(run) == REPLIES
    steps = run.steps()
    waited_for = SIGN_REMOTE if point.endswith("before_forward") else SIGN_REMOTE + 1
    assert steps[waited_for]["answered"] - steps[SIGN_REMOTE]["sent"] >= 0.3


# ---- process actions at every point ----------------------------------------------------------------


@pytest.mark.parametrize("point", POINTS)
async def test_kill_node_kills_the_wrappers_parent(tmp_path, point):
    trace = tmp_path / "t.trace"
    run = await run_plan(tmp_path, f"!hsmd_sign_remote_commitment_tx@{point}", extra=("--trace", str(trace)))
    assert run.returncode == -signal.SIGKILL
    steps = run.steps()
    assert [steps[i]["hex"] for i in range(SIGN_REMOTE)] == REPLIES[:SIGN_REMOTE]
    if point != "reply.after_forward":
        assert SIGN_REMOTE not in steps  # lightningd died before it could see (and save) the signature
    if point.startswith("reply."):
        signed = [r for r in read_trace(str(trace)) if r["kind"] == "frame" and r["dir"] == "reply" and r["seq"] == SIGN_REMOTE]
        assert signed and signed[0]["raw"].hex() == REPLIES[SIGN_REMOTE]  # ...but the signer had signed


async def test_kill_node_before_forward_with_a_drop_keeps_the_request_from_the_signer(tmp_path):
    """kill-node stops no message (docs/faults.md); with a drop at the same point the signer never
    sees the request, so it cannot sign what the dead node never learns of."""
    trace = tmp_path / "t.trace"
    plan = "!hsmd_sign_remote_commitment_tx@req; $hsmd_sign_remote_commitment_tx"
    run = await run_plan(tmp_path, plan, extra=("--trace", str(trace)))
    assert run.returncode == -signal.SIGKILL
    records = list(read_trace(str(trace)))
    assert [r["event"]["action"] for r in records if r["kind"] == "fault"] == ["kill-node", "drop"]
    assert not [r for r in records if r["kind"] == "frame" and r["dir"] == "reply" and r["seq"] == SIGN_REMOTE]
    assert not [r for r in records if r["kind"] == "divergence"]  # nothing was signed in the window


@pytest.mark.parametrize("point", POINTS)
async def test_kill_signer(tmp_path, point):
    run = await run_plan(tmp_path, f"^hsmd_sign_remote_commitment_tx@{point}")
    got = replies(run)
    assert got[:SIGN_REMOTE] == REPLIES[:SIGN_REMOTE]
    gone = ("eof", "send_failed")
    if point == "request.before_forward":  # killed before it saw the request
        assert got[SIGN_REMOTE] in gone
    elif point == "reply.before_forward":  # it had answered; the proxy still forwards that answer
        assert got[SIGN_REMOTE] == REPLIES[SIGN_REMOTE]
    else:  # it had the request, and may or may not have answered before the signal landed
        assert got[SIGN_REMOTE] in (*gone, REPLIES[SIGN_REMOTE])
    assert set(got[SIGN_REMOTE + 1:]) <= set(gone)
    assert run.tail("exit") == 128 + signal.SIGKILL or run.tail("exit") == -signal.SIGKILL


@pytest.mark.parametrize("point", POINTS)
async def test_crash_proxy_exits_at_once(tmp_path, point):
    run = await run_plan(tmp_path, f"#hsmd_sign_remote_commitment_tx@{point}")
    got = replies(run)
    assert got[:SIGN_REMOTE] == REPLIES[:SIGN_REMOTE]
    assert run.tail("exit") == CRASH_EXIT_CODE


# ---- safe by default -------------------------------------------------------------------------------


async def test_fault_rules_are_refused_without_enable_faults(tmp_path):
    with trio.fail_after(60):
        async with Run(tmp_path, "--faults=$hsmd_sign_remote_commitment_tx", enable=False) as run:
            await run.finish()
    assert "fault rules are refused" in run.stderr and "--enable-faults" in run.stderr
    assert run.steps()["init"]["result"] == "eof"  # the wrapper did not start: lightningd would say hsmd failed


async def test_control_api_refuses_rules_without_enable_faults_and_says_so(tmp_path):
    with trio.fail_after(60):
        async with Run(tmp_path, enable=False, timeout=5) as run:
            await run.next()  # init done: the control API is up
            client = run.client()
            health = await trio.to_thread.run_sync(client.health)
            assert health["faults_enabled"] is False and health["faults_active"] is False
            with pytest.raises(Exception, match="--enable-faults"):
                await trio.to_thread.run_sync(client.add, "$hsmd_sign_remote_commitment_tx")
            while (await run.next()).get("step") != len(EXCHANGES) - 1:
                pass
            # The same server reads out the shadow state (the capture's channel, and its oddities).
            state = await trio.to_thread.run_sync(client.request, "GET", "/shadow/state")
            assert [ch["dbid"] for ch in state["channels"]] == [1]
            divergences = await trio.to_thread.run_sync(client.request, "GET", "/shadow/divergences")
            assert divergences["divergences"] and all(d["dbid"] == 1 for d in divergences["divergences"])
            await run.finish()
    assert replies(run) == REPLIES
    assert "FAULT INJECTION ENABLED" not in run.stderr


async def test_enabled_via_config_file_and_announced(tmp_path):
    config = tmp_path / "hsmproxy.toml"
    config.write_text('[wrap]\nenable-faults = true\nfaults = "%hsmd_get_per_commitment_point*2 mode=stale"\n')
    with trio.fail_after(60):
        async with Run(tmp_path, "--config", str(config), enable=False) as run:
            await run.finish()
    assert "FAULT INJECTION ENABLED: seed 7, 1 rule(s)" in run.stderr
    first, second = [i for i, e in enumerate(EXCHANGES) if e["name"] == "hsmd_get_per_commitment_point"]
    assert replies(run)[second] == REPLIES[first]


# ---- reproducibility -------------------------------------------------------------------------------

RANDOM_PLAN = "~all ms=2 jitter=2 p=0.5 count=all; &hsmd_check_future_secret@reply p=0.5"


async def trace_hash(tmp_path, seed: int) -> tuple[str, int]:
    with trio.fail_after(60):
        async with Run(tmp_path, f"--faults={RANDOM_PLAN}", "--fault-seed", str(seed), timeout=0.5) as run:
            await run.finish()
    [line] = [l for l in run.stderr.splitlines() if "fault trace:" in l]
    seed_text, count, digest = line.split("seed ")[1].split(", ")
    assert int(seed_text) == seed and f"seed {seed}" in run.stderr.splitlines()[0] + run.stderr
    return digest.split("hash ")[1], int(count.split()[0])


async def test_same_seed_same_fault_trace_hash_different_seeds_differ(tmp_path):
    runs = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        runs.append(await trace_hash(tmp_path / str(i), 1234))
    assert len(set(runs)) == 1 and runs[0][1] > 0
    (tmp_path / "other").mkdir()
    assert (await trace_hash(tmp_path / "other", 99))[0] != runs[0][0]


async def test_the_documented_crash_window_plan(tmp_path):
    """examples/faults-crash-window.toml: lightningd dies holding no signature the signer gave."""
    plan = ROOT / "examples" / "faults-crash-window.toml"
    trace = tmp_path / "t.trace"
    run = await run_plan(tmp_path, str(plan), extra=("--trace", str(trace)))
    assert run.returncode == -signal.SIGKILL
    assert sorted(k for k in run.steps() if isinstance(k, int)) == list(range(SIGN_REMOTE))
    signed = [r for r in read_trace(str(trace)) if r["kind"] == "frame" and r["dir"] == "reply" and r["seq"] == SIGN_REMOTE]
    assert signed[0]["raw"].hex() == REPLIES[SIGN_REMOTE]
    assert "FAULT INJECTION ENABLED: seed 7" in run.stderr  # --fault-seed wins over the plan's seed


async def test_corrupt_wrong_sig_reply_is_well_formed(tmp_path):
    run = await run_plan(tmp_path, "%hsmd_sign_remote_commitment_tx mode=wrong-sig")
    got = replies(run)
    forged = wire.decode(bytes.fromhex(got[SIGN_REMOTE]))
    assert forged.name == "hsmd_sign_tx_reply" and got[SIGN_REMOTE] != REPLIES[SIGN_REMOTE]
    assert got[:SIGN_REMOTE] + got[SIGN_REMOTE + 1:] == REPLIES[:SIGN_REMOTE] + REPLIES[SIGN_REMOTE + 1:]
