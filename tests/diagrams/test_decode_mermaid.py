"""``hsmproxy decode --mermaid`` as a user runs it: a real subprocess on a real chaos run's traces."""

from __future__ import annotations

import subprocess
import sys

from diagrams.mermaid import to_mermaid
from diagrams.sequence import Where, critical_windows, join_windows, sequence_from_traces
from proxy.addons.trace import TraceHook
from tests.paths import ROOT


def decode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hsmproxy.cli", "decode", *args], capture_output=True, text=True,
                          timeout=60)


def test_the_default_is_the_critical_windows_and_all_is_everything(story_traces):
    paths = [str(p) for p in story_traces["honest-crash"]]
    seq = sequence_from_traces(paths)
    result = decode("--mermaid", *paths)
    assert result.returncode == 0, result.stderr
    assert result.stdout == to_mermaid(join_windows(seq, critical_windows(seq)))
    everything = decode("--mermaid", "--all", *paths)
    assert everything.returncode == 0 and everything.stdout == to_mermaid(seq)
    assert len(everything.stdout) > len(result.stdout)


def test_channel_from_and_to_cut_a_window(story_traces):
    paths = [str(p) for p in story_traces["honest-crash"]]
    result = decode("--mermaid", "--channel", "1", "--from", "36", "--to", "2:23", *paths)
    assert result.returncode == 0, result.stderr
    assert result.stdout == to_mermaid(sequence_from_traces(paths, channel="1", start=Where(0, 36), end=Where(1, 23)))
    assert "fault kill-node" in result.stdout and "restart" in result.stdout and "left out" not in result.stdout


def test_a_trace_without_faults_is_drawn_whole_with_a_word_on_stderr(tmp_path):
    path = tmp_path / "quiet.mp"
    TraceHook(str(path)).close()
    result = decode("--mermaid", str(path))
    assert result.returncode == 0 and result.stdout.startswith("sequenceDiagram\n")
    assert "no fault or divergence" in result.stderr


def test_bad_input_is_a_clear_error_naming_the_file(story_traces, tmp_path):
    trace = story_traces["honest-crash"][0]
    damaged = tmp_path / "damaged.mp"
    data = trace.read_bytes()
    damaged.write_bytes(data[:1500] + bytes(range(0xc1, 0xff)) * 4 + data[1500:])
    cases = {
        "not a trace": ([str(ROOT / "README.md")], "README.md is not an hsmproxy trace"),
        "missing": ([str(tmp_path / "nope.mp")], "nope.mp: no such file"),
        "damaged": ([str(damaged)], f"{damaged}"),
        "bad --from": (["--from", "x", str(trace)], "--from 'x'"),
        "--from past the traces": (["--from", "3:1", str(trace)], "K must be from 1 to 1"),
        "bad --channel": (["--channel", "zz", str(trace)], "channel 'zz'"),
        "with --json": (["--json", str(trace)], "--json does not apply"),
    }
    for name, (args, said) in cases.items():
        result = decode("--mermaid", *args)
        assert result.returncode == 2, name
        assert said in result.stderr and "Traceback" not in result.stderr, (name, result.stderr)
    assert "damaged" in decode("--mermaid", str(damaged)).stderr
    only = decode("--all", str(trace))
    assert only.returncode == 2 and "add --mermaid" in only.stderr
