"""Chaos runs through the fork server: node, proxy and signer are still real, separate processes
in the same parent-child chain, a SIGKILL kills them, and every result is the one exec gives."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from chaos.runner import run_spec, start_fork_server
from chaos.specs import campaign_spec
from forkserver.launch import cli_prefix, write_script
from forkserver.server import ForkServerError
from proxy.trio.children import live_processes
from proxy.trio.subdaemon import wait_process
from sim.node import EXIT_OK, EXIT_SIGNER
from sim.node_cmd import read_summary
from tests.chaos.helpers import command_line


def _children(pid: int) -> list[int]:
    return [child for child, fields in live_processes() if int(fields[1]) == pid]


async def _chain(node_pid: int) -> tuple[int, int]:
    """(proxy, signer): the node's only child and its only child, once both are up (not the
    `--version` check the node runs first)."""
    while True:
        proxies = _children(node_pid)
        signers = _children(proxies[0]) if len(proxies) == 1 else []
        signer = command_line(signers[0]) if len(signers) == 1 else ""
        if "sim-signer" in signer and "--version" not in signer:
            return proxies[0], signers[0]
        await trio.sleep(0.02)


async def _gone(*pids: int) -> None:
    while any(pid in dict(live_processes()) for pid in pids):
        await trio.sleep(0.02)


@pytest.fixture
async def fork_server():
    server = start_fork_server()
    try:
        yield server
    finally:
        server.close()


async def test_forked_actors_are_separate_processes_that_a_sigkill_kills_and_a_restart_resumes(tmp_path, fork_server):
    signer = tmp_path / "sim-signer.sh"
    write_script(signer, [*cli_prefix(), "sim-signer"], "our simulated signer")
    wrapper = tmp_path / "hsmd-wrapper.sh"
    write_script(wrapper, [*cli_prefix(), "wrap", "--signer", str(signer), "--wal-dir", str(tmp_path / "wal"), "--"],
                 "the proxy in front of it")

    async def node(n: int, updates: int):
        out, err = tmp_path / f"node-{n}.json", tmp_path / f"node-{n}.log"
        with open(out, "wb") as o, open(err, "wb") as e, open(os.devnull, "rb") as devnull:
            proc = await trio.to_thread.run_sync(lambda: fork_server.spawn(
                ["sim-node", "--data-dir", str(tmp_path / "node"), "--updates", str(updates), "--discipline", "wal",
                 "--signer", str(wrapper), "--json"], {0: devnull.fileno(), 1: o.fileno(), 2: e.fileno()},
                env=os.environ, cwd=tmp_path, new_session=True))
        return proc, out, err

    with trio.fail_after(120):
        # 1. The chain an exec gives: we start the node, the node its proxy, the proxy its signer.
        first, _, err = await node(0, 1_000_000)
        try:
            proxy, signer_pid = await _chain(first.pid)
            assert len({os.getpid(), fork_server.proc.pid, first.pid, proxy, signer_pid}) == 5
            stat = {pid: fields for pid, fields in live_processes() if pid in (first.pid, proxy, signer_pid)}
            assert int(stat[first.pid][1]) == os.getpid()  # ours, not the fork server's: we reap it
            assert {int(stat[pid][2]) for pid in stat} == {first.pid}  # the node's own process group
            assert " sim-node --data-dir " in command_line(first.pid) and " wrap --signer " in command_line(proxy)
            # 2. SIGKILL the proxy: it really dies, and its parent, the node, sees how.
            os.kill(proxy, signal.SIGKILL)
            assert await wait_process(first) == EXIT_SIGNER
            assert "signer exit status -9" in err.read_text()  # waitpid on the node's own child
            await _gone(proxy, signer_pid)  # the orphaned signer read EOF and left
        finally:
            if first.returncode is None:
                os.killpg(first.pid, signal.SIGKILL)
                await wait_process(first)

        # 3. SIGKILL the node: we, its parent, see the signal; its proxy and signer follow.
        second, _, _ = await node(1, 1_000_000)
        proxy, signer_pid = await _chain(second.pid)
        os.kill(second.pid, signal.SIGKILL)
        assert await wait_process(second) == -signal.SIGKILL
        await _gone(proxy, signer_pid)

        # 4. The restart on the same directories finishes the work.
        third, out, err = await node(2, 2)
        assert await wait_process(third) == EXIT_OK, err.read_text()
        assert read_summary(out.read_text())["updates_completed"] == 2


def _comparable(result) -> tuple:
    return (result.outcome, result.fault_trace_hash, result.restarts, result.violations,
            [(f["rule"], f["incarnation"], f["seq"], f["action"]) for f in result.faults],
            sorted((d["kind"], d["status"]) for d in result.divergences))


@pytest.mark.timeout(300)
async def test_a_seed_gives_the_same_result_with_and_without_the_fork_server(tmp_path, fork_server):
    forked, execd = [], []
    with trio.fail_after(280):
        for seed in (3, 7):  # kill-node, kill-signer and crash-proxy among them
            spec = campaign_spec(seed)
            forked.append(await run_spec(spec, tmp_path / "forked", keep="failed", fork_server=fork_server))
            execd.append(await run_spec(spec, tmp_path / "exec", keep="failed"))
    assert [_comparable(r) for r in forked] == [_comparable(r) for r in execd]
    assert all(r.ok and r.restarts for r in forked)
    assert {"kill-node", "kill-signer", "crash-proxy"} <= {f["action"] for r in forked for f in r.faults}


async def test_a_dead_fork_server_is_a_clear_error_not_a_hang(tmp_path, fork_server):
    with trio.fail_after(60):
        with pytest.raises(ForkServerError, match="working directory .*missing.* does not exist"):
            await trio.to_thread.run_sync(lambda: fork_server.spawn(
                ["sim-signer", "--version"], {}, env=os.environ, cwd=tmp_path / "missing"))
        os.kill(fork_server.proc.pid, signal.SIGKILL)
        fork_server.proc.wait()
        with pytest.raises(ForkServerError, match=r"exited with status -9.*--no-fork-server"):
            await run_spec(campaign_spec(5), tmp_path, fork_server=fork_server)
