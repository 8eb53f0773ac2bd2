"""The queries of the committed dashboards and alert rules, for the static and the live tests."""

from __future__ import annotations

import json

from tests.paths import ROOT

DASHBOARDS = ROOT / "dashboards"
RULES = DASHBOARDS / "rules" / "hsmproxy-alerts.yml"


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every query of every committed dashboard."""
    out = []
    for path in sorted(DASHBOARDS.glob("hsmproxy-*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    exprs = []
    alert = None
    for line in RULES.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            alert = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("expr:"):
            exprs.append((alert, stripped.split(":", 1)[1].strip()))
    return exprs
