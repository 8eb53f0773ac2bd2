"""A real Prometheus scrapes a real proxy (and a real chaos session) and every dashboard panel
and alert rule has data.

The proxy runs in wrapper mode between the simulated node and the simulated validating signer
(retry-same demoted to a warning, the unsafe "fix" of the write-up), with a WAL and faults:
the first node incarnation is killed in the split-brain window; the second one re-signs the
index with different HTLCs (retry_changed, then double_signed), is slowed by a delay fault and
is finally held by a hold fault, so the proxy stays up while Prometheus is queried. A chaos
campaign runs beside it with --metrics for the chaos dashboard.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.prometheus_server import free_port, running_prometheus
from tests.dashboards.helpers import dashboard_exprs, rule_exprs
from tests.paths import ROOT

ROOT = ROOT
RULES = ROOT / "dashboards" / "rules" / "hsmproxy-alerts.yml"
RATE_WINDOW = "20s"  # what Grafana's $__rate_interval becomes here (scrapes every 0.5 s)
COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*-?[0-9.]+\s*$")

pytestmark = pytest.mark.timeout(240)


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _script(path: Path, argv: list[str]) -> Path:
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
    path.write_text(f'#!/bin/sh\nexec {quoted} "$@"\n')
    path.chmod(0o755)
    return path


def _hsmproxy(*args: str) -> list[str]:
    return [sys.executable, "-m", "hsmproxy.cli", *args]


def _node(data: Path, wrapper: Path) -> list[str]:
    return _hsmproxy("sim-node", "--data-dir", str(data), "--updates", "8", "--discipline", "naive", "--seed", "1",
                     "--signer", str(wrapper), "--json", "--policy-filter", "policy-commitment-retry-same:warn")


def _base(expr: str) -> str:
    """An alert rule's query without its threshold: does the data it alerts on exist?"""
    return COMPARISON.sub("", expr)


def _stop(proc: subprocess.Popen, *, gently: bool = False) -> None:
    """Stop a process group. A chaos session is asked first (SIGTERM): its runs live in process
    groups of their own, which only the session knows to reap."""
    if gently and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def test_every_dashboard_query_and_alert_has_data(tmp_path: Path):
    proxy_port, chaos_port = free_port(), free_port()
    data, wal = tmp_path / "node", tmp_path / "wal"
    data.mkdir()
    signer = _script(tmp_path / "signer.sh", _hsmproxy("sim-signer"))
    common = ["wrap", "--signer", str(signer), "--wal-dir", str(wal), "--enable-faults", "--fault-seed", "7"]
    crash = _script(tmp_path / "wrap-1.sh", _hsmproxy(
        *common, "--faults=!hsmd_sign_remote_commitment_tx commit_num==1", "--"))
    slow_then_hold = _script(tmp_path / "wrap-2.sh", _hsmproxy(
        *common, "--metrics", f"127.0.0.1:{proxy_port}",
        "--faults=~signing ms=30 count=all; 0hsmd_sign_remote_commitment_tx commit_num==5", "--"))

    first = subprocess.run(_node(data, crash), env=_env(), capture_output=True, timeout=120, cwd=tmp_path)
    assert first.returncode == -signal.SIGKILL, first.stderr.decode()[-2000:]

    with running_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{proxy_port}", f"127.0.0.1:{chaos_port}"],
                            scrape_interval="500ms") as prometheus:
        node = subprocess.Popen(_node(data, slow_then_hold), env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=tmp_path, start_new_session=True)
        chaos = subprocess.Popen(
            _hsmproxy("chaos", "--seeds", "1..500", "--updates", "2", "--metrics", f"127.0.0.1:{chaos_port}",
                      "--no-live", "--keep", "none", "--workdir", str(tmp_path / "chaos")),
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True,
        )
        try:
            # The second node is held at commitment 5 (it waits, as lightningd waits on hsmd) and
            # a chaos run has finished: every series exists; give rate() a few scrapes of both.
            prometheus.wait_for_samples('hsmproxy_faults_injected_total{action="hold"} > 0', timeout=120)
            prometheus.wait_for_samples("sum(hsmproxy_chaos_runs_total) > 0", timeout=150)
            time.sleep(3)
            assert node.poll() is None, node.stderr.read().decode()[-2000:]

            divergences = {r["metric"]["kind"]: float(r["value"][1])
                           for r in prometheus.query("hsmproxy_divergences_total")}
            assert divergences["retry_changed"] >= 1 and divergences["double_signed"] >= 1, divergences
            # The first node died in the window; the second proxy found that in the WAL, and the
            # second node's changed retry confirmed it: no channel is left possibly behind.
            assert float(prometheus.query("max(hsmproxy_crashed_in_window_open)")[0]["value"][1]) == 0
            assert float(prometheus.query("sum(hsmproxy_wal_recovered_records_total)")[0]["value"][1]) > 0

            empty = []
            for board, title, expr in dashboard_exprs():
                query = expr.replace("$__rate_interval", RATE_WINDOW)
                if not prometheus.query(query):
                    empty.append(f"{board} / {title}: {query}")
            for alert, expr in rule_exprs():
                if not prometheus.query(_base(expr)):
                    empty.append(f"alert {alert}: {_base(expr)}")
            assert not empty, "queries without data:\n" + "\n".join(empty)
            assert len(dashboard_exprs()) >= 25 and len(rule_exprs()) == 10
        finally:
            _stop(node)
            _stop(chaos, gently=True)


def test_alert_rules_load_into_prometheus(tmp_path: Path):
    """Prometheus itself loads the rule file (not just promtool)."""
    with running_prometheus(tmp_path, [], rule_files=[RULES]) as prometheus:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"HsmproxyDoubleSigned", "HsmproxyRetryChanged", "HsmproxySignerDown", "HsmproxyCrashedInWindow",
            "HsmproxyDivergenceInDoubt"} <= names
    assert json.dumps(groups)  # well-formed answer
