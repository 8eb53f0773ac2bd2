"""Dashboards, alert rules and the metrics they query: generated, well-formed, checked by promtool."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess

from proxy.addons.metrics import Metrics
from tests.dashboards.helpers import DASHBOARDS, RULES, dashboard_exprs, rule_exprs
from tests.paths import ROOT

ROOT = ROOT
PROMTOOL = shutil.which("promtool") or "promtool"  # ./scripts/test installs Debian's prometheus

METRIC_NAME = re.compile(r"\b(hsmproxy_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _generator():
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_are_generated():
    rendered = _generator().render()
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, f"run python dashboards/generate.py ({name} is stale)"


def test_dashboards_are_well_formed():
    for path in sorted(DASHBOARDS.glob("hsmproxy-*.json")):
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        assert any(v["name"] == "datasource" for v in board["templating"]["list"])
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, (path.name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["targets"], panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids))
            assert all(t["expr"].strip() for t in panel["targets"])


def test_every_queried_metric_exists():
    """A typo in a metric name would make a panel silently empty."""
    exported = {m.name for m in Metrics().registry.collect()}
    histograms = {m.name for m in Metrics().registry.collect() if m.type == "histogram"}
    queried = [(where, name) for where, _, expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)]
    queried += [(alert, name) for alert, expr in rule_exprs() for name in METRIC_NAME.findall(expr)]
    assert queried
    for where, name in queried:
        base = name.removesuffix("_total")
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
                base = name.removesuffix(suffix)
        assert base in exported, f"{where} queries {name}, which hsmproxy does not export"


def test_promtool_check_and_test_rules():
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [PROMTOOL, "test", "rules", "hsmproxy-alerts.test.yml"],
        cwd=RULES.parent, capture_output=True, text=True, timeout=60,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_promtool_check_metrics_on_our_exposition():
    metrics = Metrics(channel_detail=2)
    metrics.frame("node_to_signer", None, bytes.fromhex("0012ff"))
    metrics.roundtrip("hsmd_sign_remote_commitment_tx", 0.0004)
    metrics.divergences.labels(kind="retry_changed").inc()
    metrics.channel_detail("02aa/1", 5)
    text, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()


def test_example_scrape_config_is_valid():
    check = subprocess.run(
        [PROMTOOL, "check", "config", str(DASHBOARDS / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_per_channel_detail_is_capped():
    metrics = Metrics(channel_detail=3)
    for i in range(10):
        metrics.channel_detail(f"chan{i}", i)
    text = metrics.exposition()[0].decode()
    assert text.count("hsmproxy_channel_next_counterparty_commit_num{") == 3
    assert "hsmproxy_channel_next_counterparty_commit_num{" not in Metrics().exposition()[0].decode()
