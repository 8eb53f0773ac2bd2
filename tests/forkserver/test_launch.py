"""Forking one of our scripts instead of exec'ing it: which scripts, and what the child gets."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest

from forkserver import launch
from forkserver.launch import cli_prefix, fork_script, forkable_args, write_script


@pytest.fixture
def signer_script(tmp_path):
    path = tmp_path / "sim-signer.sh"
    write_script(path, [*cli_prefix(), "sim-signer"], "our simulated signer")
    return path


def test_only_our_scripts_for_this_interpreter_are_forked_and_only_below_the_fork_server(tmp_path, signer_script,
                                                                                         monkeypatch):
    monkeypatch.setattr(launch, "_entry", None)
    assert forkable_args([str(signer_script), "--developer"]) is None  # not a fork server's process: exec
    monkeypatch.setattr(launch, "_entry", lambda args: 0)
    assert forkable_args([str(signer_script), "--developer"]) == ["sim-signer", "--developer"]
    other = tmp_path / "other.sh"
    write_script(other, ["/usr/bin/python3", "-m", "hsmproxy.cli", "sim-signer"], "another interpreter")
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\nexec true\n")
    assert forkable_args([str(other)]) is None  # its code may differ from ours: only exec runs it
    assert forkable_args([str(plain)]) is None
    assert forkable_args([str(tmp_path / "missing")]) is None
    answering = tmp_path / "wrapper.sh"
    write_script(answering, [*cli_prefix(), "wrap", "--signer", str(signer_script), "--"], "a proxy", version="v9\n")
    assert forkable_args([str(answering), "--version"]) is None  # the script answers it
    done = subprocess.run([str(answering), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "v9\n")
    # The same script still runs by exec.
    done = subprocess.run([str(signer_script), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "hsmproxy-sim-signer-0.1\n")


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_forked_child_gets_what_an_exec_would_give_and_its_exit_status_is_seen(tmp_path, signer_script,
                                                                                  monkeypatch):
    def entry(args: list[str]) -> int:
        report = {"args": args, "fds": [fd for fd in range(256) if _is_open(fd)], "cwd": os.getcwd(),
                  "env": dict(os.environ), "ppid": os.getppid(), "random": random.random(),
                  "cmdline": open("/proc/self/cmdline", "rb").read().rstrip(b"\0").decode().split("\0")}
        os.write(3, json.dumps(report).encode())
        return 7

    monkeypatch.setattr(launch, "_entry", entry)
    read_end, write_end = os.pipe()
    stray = os.open(os.devnull, os.O_RDONLY)  # ours; the child must not have it
    state = random.getstate()
    try:
        proc = fork_script([str(signer_script), "--developer"], {0: stray, 3: write_end}, cwd=tmp_path,
                           env={"PATH": os.environ["PATH"], "ONLY": "this"})
        assert proc is not None
        os.close(write_end)
        assert proc.wait(timeout=60) == 7 and proc.returncode == 7
        report = json.loads(os.read(read_end, 1 << 20))
    finally:
        os.close(read_end)
        os.close(stray)
    assert report["args"] == ["sim-signer", "--developer"]
    assert report["fds"] == [0, 1, 2, 3]  # fd 0 and 3 as given, 1 and 2 inherited, nothing else
    assert report["cwd"] == str(tmp_path)
    assert report["env"] == {"PATH": os.environ["PATH"], "ONLY": "this"}
    assert report["ppid"] == os.getpid()
    # What ps shows, as after exec, cut to the room our own command line leaves (the fork server
    # leaves enough; pytest's may not).
    shown = "\0".join(report["cmdline"])
    assert len(shown) > 20 and "\0".join([*cli_prefix(), "sim-signer", "--developer"]).startswith(shown)
    random.setstate(state)
    assert report["random"] != random.random()  # reseeded in the child, not a copy of our sequence
