"""``hsmproxy chaos --html``: real sessions write the report, and headless Chromium (Debian's
``chromium`` and ``chromium-driver``, through selenium) renders it with the network blocked.

One stories report and one small campaign are written once per module and checked several ways.
Screenshots of the full pages land in pytest's tmp directory, and in ``$HSMPROXY_SCREENSHOTS``
when that is set (to look at them).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from chaos import html_report
from chaos.cln.judge import CONVERGED, DRIVE, PENDING, STUCK, Payment
from chaos.cln.points import CrashPoint
from chaos.cln.result import CycleResult
from chaos.cln.sweep import SweepReport, replay_command
from chaos.cln.traces import FiredFault
from chaos.result import RunResult
from chaos.windows import windows_from_traces
from diagrams.sequence import FAULT, Note
from tests.chaos.helpers import CLI

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
STORY_COLUMNS = ["honest-crash", "pretend-crash, retry-same enforced", "pretend-crash, retry-same warn-only", "wal-fix"]


def _chaos(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "chaos", "--no-live", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stories(tmp_path_factory) -> dict:
    """The write-up's stories, with their directories kept (the sweep page reuses a trace)."""
    root = tmp_path_factory.mktemp("stories")
    done = _chaos("--jobs", "2", "--html", str(root / "stories.html"), "--json", str(root / "stories.json"),
                  "--workdir", str(root / "runs"), "--keep", "all")
    assert done.returncode == 0, done.stdout + done.stderr
    return {"html": root / "stories.html", "runs": json.loads((root / "stories.json").read_text())["runs"],
            "workdir": root / "runs"}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("campaign")
    done = _chaos("--seeds", "1..3", "--jobs", "2", "--html", str(root / "campaign.html"),
                  "--json", str(root / "campaign.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    return {"html": root / "campaign.html", "runs": json.loads((root / "campaign.json").read_text())["runs"]}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium that can reach nothing but files: a dead proxy for every scheme, and
    DevTools blocking every network URL on top."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (./scripts/setup --test installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900",
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]})
        yield driver
    finally:
        driver.quit()


def open_report(driver, path: Path, shot_name: str, shots: Path) -> None:
    """Load the page, check that it fetched nothing and logged no error, and save a full-page
    screenshot."""
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(path.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    navigation = driver.execute_script("return performance.getEntriesByType('navigation').map(e => e.name)")
    assert resources == [] and navigation == [path.as_uri()], (resources, navigation)
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    save_screenshot(driver, shots / shot_name)


def save_screenshot(driver, path: Path) -> None:
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    data = base64.b64decode(shot["data"])
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    path.write_bytes(data)
    extra = os.environ.get("HSMPROXY_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def drawn_svgs(driver, selector: str) -> list[dict]:
    """Every SVG under ``selector``, with its size on the page and how many shapes it drew."""
    return driver.execute_script("""
        return [...document.querySelectorAll(arguments[0])].map(svg => {
            const box = svg.getBoundingClientRect();
            return {width: box.width, height: box.height, shapes: svg.querySelectorAll('path, text, rect, line').length};
        });""", selector)


def _rendered(svgs: list[dict]) -> bool:
    return bool(svgs) and all(s["width"] > 50 and s["height"] > 50 and s["shapes"] > 5 for s in svgs)


def test_the_stories_report_renders_offline_with_the_write_ups_table_and_a_diagram_per_run(browser, stories, shots):
    open_report(browser, stories["html"], "stories.png", shots)
    heads = [th.text for th in browser.find_elements("css selector", "table.stories thead th")][1:]
    assert heads == STORY_COLUMNS
    outcomes = [td.text.split()[0] for td in browser.find_elements("xpath", "//table[@class='stories']//tr[th='outcome']/td")]
    by_story = {(r["scenario"], r["signer_policy"]): r["outcome"] for r in stories["runs"]}
    assert outcomes == [by_story[("honest-crash", "enforce")], by_story[("pretend-crash", "enforce")],
                        by_story[("pretend-crash", "warn")], by_story[("wal-fix", "enforce")]]
    assert outcomes == ["stuck", "refused", "funds_lost", "converged"]
    signer = browser.find_element("xpath", "//table[@class='stories']//tr[th='what the signer did']").text
    assert "refused: policy-commitment-retry-same" in signer and "signed commitment 1 twice" in signer
    # The outcome table: one row per run, each with its replay command further down.
    assert len(browser.find_elements("css selector", "#outcomes tbody tr")) == 4
    replays = [pre.text for pre in browser.find_elements("xpath", "//h3[.='replay']/following-sibling::pre[1]")]
    assert sorted(replays) == sorted(r["reproduce"] for r in stories["runs"])
    # Every run's sequence diagram is on the page and drawn.
    for i in range(4):
        assert _rendered(drawn_svgs(browser, f"#run-{i} .diagram svg")), f"run {i}'s diagram did not render"


def test_the_campaign_report_renders_its_plots_and_each_runs_diagram(browser, campaign, shots):
    open_report(browser, campaign["html"], "campaign.png", shots)
    assert len(browser.find_elements("css selector", "#outcomes tbody tr")) == len(campaign["runs"]) == 3
    plots = drawn_svgs(browser, ".plots svg")
    assert len(plots) == 3 and _rendered(plots), plots
    titles = browser.execute_script("return [...document.querySelectorAll('.plots svg text')].map(t => t.textContent)")
    assert {"runs by outcome per scenario", "faults by point and action", "divergences per run"} <= set(titles)
    for i in range(3):
        assert _rendered(drawn_svgs(browser, f"#run-{i} .diagram svg")), f"run {i}'s diagram did not render"


def test_the_reports_hold_no_script_and_reference_nothing_outside_the_file(stories, campaign):
    for path in (stories["html"], campaign["html"]):
        text = path.read_text()
        assert "<script" not in text.lower() and "@import" not in text and "<link" not in text
        # The only URLs are XML namespace names, which are never fetched.
        urls = set(re.findall(r"(?:https?|ftp|wss?)://[^\s\"'<>)]+", text))
        assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls


def test_no_secret_and_no_body_reaches_the_page(stories):
    """The signers' hsm_secret is nowhere on the page, and the only long hex strings are the fault
    trace hashes: no message body (signatures, points, transactions) is shown."""
    page = stories["html"].read_text()
    secrets = [p.read_bytes() for p in stories["workdir"].glob("*/node/hsm_secret")]
    assert len(secrets) == 4
    for secret in secrets:
        assert secret.hex() not in page.lower() and secret.hex()[:16] not in page.lower()
    long_hex = set(re.findall(r"[0-9a-fA-F]{32,}", page))
    assert long_hex == {r["fault_trace_hash"] for r in stories["runs"]}


def test_a_report_path_that_cannot_be_written_is_refused_before_any_run(tmp_path):
    done = _chaos("--scenario", "wal-fix", "--html", str(tmp_path / "missing" / "r.html"), timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert f"--html {tmp_path / 'missing' / 'r.html'}: the directory {tmp_path / 'missing'} does not exist" in done.stderr


def _run_with(detail: str) -> RunResult:
    return RunResult("campaign", 7, "invariant_violated",
                     [{"kind": "retry_changed", "status": "confirmed", "dbid": 1, "index": 1, "detail": detail}],
                     [], 0, "ab" * 32, f"hsmproxy chaos --seeds 7..7 {detail}",
                     violations=[{"invariant": "no_double_sign", "detail": detail}],
                     faults=[{"incarnation": 0, "rule": "r<1>", "point": "reply.before_forward", "connection": "c",
                              "seq": 3, "message": "hsmd_sign_tx_reply", "action": "kill-node", "detail": detail}],
                     fault_plan=f"!hsmd_sign_tx name=r<1> {detail}", windows_note=f"no diagram {detail}")


def test_every_text_on_the_page_is_escaped():
    hostile = "<img src=x onerror=alert(1)>&amp;\"'"
    page = html_report.session_html([_run_with(hostile)], {"command": f"hsmproxy chaos {hostile}"})
    assert "<img" not in page and "onerror=alert(1)>" not in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;&amp;amp;&quot;&#x27;") >= 6


def _cycle(outcome: str, windows: list, note: str = "", **kw) -> CycleResult:
    cp = CrashPoint("l1", "hsmd_sign_remote_commitment_tx", "reply.before_forward")
    return CycleResult(cp.message, cp.point, cp.node, outcome, replay_command(("--lightningd", "L"), cp),
                       fault=cp.fault_line(1, "sweep-1"),
                       fired=FiredFault("sweep-1", "kill-node", cp.point, "hsmd_sign_tx_reply", 40, 1),
                       windows=windows, windows_note=note, **kw)


def test_a_windows_start_leaves_out_what_came_before(stories):
    """A sweep's killed node has one trace for all its cycles since its last start: the cycle's
    diagram starts at the record where the cycle did."""
    traces = sorted((stories["workdir"] / "honest-crash-1-enforce" / "logs").glob("trace-*.mp"))
    whole, _ = windows_from_traces(traces)
    fault = next(step.where for w in whole for step in w.steps if isinstance(step, Note) and step.kind == FAULT)
    later, note = windows_from_traces(traces, start=fault.record + 1)
    assert later and not note  # the divergences after the restart are still there
    steps = [step for w in later for step in w.steps]
    assert min(step.where for step in steps) > fault
    assert not any(isinstance(step, Note) and step.kind == FAULT for step in steps)


def test_a_sweep_report_renders_each_cycle_with_its_diagram(browser, stories, shots):
    """No Core Lightning here: the cycles are built by hand, their diagrams cut from the real
    trace of the honest-crash story (the same proxy traces a sweep's nodes write)."""
    traces = sorted((stories["workdir"] / "honest-crash-1-enforce" / "logs").glob("trace-*.mp"))
    windows, note = windows_from_traces(traces)
    assert windows and not note
    stuck = _cycle(STUCK, windows, reasons=["drive payment l1->l2 still pending"],
                   divergences=[{"node": "l1", "kind": "retry_changed", "status": "confirmed", "dbid": 1, "index": 1,
                                 "detail": "x"}],
                   payments=[Payment("l1", "l2", 1_000_000, "fulfil", DRIVE, "00" * 32, PENDING, interrupted=True)])
    fine = _cycle(CONVERGED, [], "no sequence diagram: no fault fired and no divergence was flagged")
    page = stories["html"].parent / "sweep.html"
    html_report.write_sweep_html(str(page), SweepReport([stuck, fine], {}, 12.0, 20.0, 8.0, None, "v26.06.6"),
                                 {"command": "hsmproxy chaos --lightningd L"})
    open_report(browser, page, "sweep.png", shots)
    assert len(browser.find_elements("css selector", "#outcomes tbody tr")) == 2
    assert _rendered(drawn_svgs(browser, "#cycle-0 .diagram svg")) and _rendered(drawn_svgs(browser, ".plots svg"))
    assert "no fault fired and no divergence was flagged" in browser.find_element("id", "cycle-1").text
