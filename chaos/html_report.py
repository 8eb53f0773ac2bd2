"""``hsmproxy chaos --html FILE``: one self-contained HTML page per session.

The page reads offline: CSS inline, every diagram inline SVG (matplotlib, drawn here), no script,
and a Content-Security-Policy that forbids the page to fetch anything. It shows the outcome
table; for the built-in stories, the write-up's side-by-side table from the real runs; for a
campaign, plots (``diagrams.plots``); then per run its fault schedule, divergences, the command
that replays it and the sequence diagram of its critical windows (cut from the proxy's traces by
the runner while they still existed: ``RunResult.windows``). Every piece of text is escaped.
"""

from __future__ import annotations

import re
from collections import Counter
from html import escape

from chaos.cln.judge import CYCLE_OUTCOMES
from chaos.cln.result import CycleResult
from chaos.cln.result import narrate as narrate_cycle
from chaos.cln.sweep import SweepReport
from chaos.report import describe_faults, write_text, narrate, summary
from chaos.result import RunResult
from chaos.scenarios import BUILTIN, OUTCOMES, WARN
from diagrams import plots, sequence_svg
from diagrams.mermaid import to_mermaid
from wire.conversation import POINTS

# One colour per outcome, in the page and in the plots.
OUTCOME_COLORS = {"converged": "#2e7d32", "refused": "#0277bd", "stuck": "#ef6c00", "funds_lost": "#c62828",
                  "invariant_violated": "#6a1b9a", "not_reached": "#757575", "error": "#37474f"}
# More runs than this: only failed runs' sections start open (a 50-seed campaign stays short).
OPEN_ALL_UP_TO = 12
SIDE_BY_SIDE_UP_TO = 6  # story runs shown as columns of the write-up's table

_CSP = "default-src 'none'; style-src 'unsafe-inline'"  # the page may fetch nothing at all

_CSS = """
:root { color-scheme: light; --line: #d0d7de; --muted: #57606a; --bg-alt: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1f2328;
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1280px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
.meta { color: var(--muted); margin: 0 0 8px; } .meta code { font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; max-width: 100%; }
table#outcomes, table.stories { width: 100%; }
#outcomes td:first-child, #outcomes td:has(.badge), #outcomes td.num { white-space: nowrap; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; overflow-wrap: break-word; }
th { background: var(--bg-alt); font-weight: 600; white-space: nowrap; }
.stories thead th { white-space: normal; }
td.num, th.num { text-align: right; white-space: nowrap; }
tr.failed td { background: #ffebe9; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; color: #fff; font-size: 12px; font-weight: 600;
         white-space: nowrap; }
.ok { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
pre, code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
pre { background: var(--bg-alt); border: 1px solid var(--line); padding: 6px 8px; white-space: pre-wrap;
      overflow-wrap: anywhere; margin: 4px 0 8px; }
details.run { border: 1px solid var(--line); border-radius: 6px; margin: 4px 0; padding: 0 12px; }
details.run[open] { margin: 12px 0; }
details.run > summary { cursor: pointer; padding: 5px 0; font-weight: 600; }
details.run > summary .count { font-weight: normal; color: var(--muted); }
details.run[open] > summary { border-bottom: 1px solid var(--line); margin-bottom: 6px; }
details.mermaid > summary { cursor: pointer; color: var(--muted); }
.stories th:first-child { width: 150px; }
.stories td { width: 22%; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 12px; align-items: start; }
figure { margin: 6px 0 12px; } figcaption { color: var(--muted); font-size: 12px; margin-bottom: 4px; }
.diagram { overflow-x: auto; border: 1px solid var(--line); border-radius: 4px; padding: 4px; background: #fff; }
svg { max-width: 100%; height: auto; display: block; }
.diagram svg { max-width: none; margin: 0 auto; }
.none { color: var(--muted); font-style: italic; } .nw { white-space: nowrap; }
"""

_ID = re.compile(r'\bid="([^"]+)"')
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def inline_svg(svg: str, prefix: str) -> str:
    """An SVG document as an element of the page: no XML prolog, no metadata (matplotlib's RDF
    block), and its ids (clip paths, glyphs) prefixed, so two diagrams on one page never share
    an id."""
    svg = _METADATA.sub("", svg[svg.index("<svg"):], count=1)
    ids = set(_ID.findall(svg))
    if not ids:
        return svg

    def rename(match: re.Match) -> str:
        head, name, tail = match.group(1), match.group(2), match.group(3)
        return f"{head}{prefix}-{name}{tail}" if name in ids else match.group(0)

    return re.sub(r'(\bid="|url\(#|href="#)([^")]+)([")])', rename, svg)


def _badge(outcome: str) -> str:
    color = OUTCOME_COLORS.get(outcome, "#57606a")
    return f'<span class="badge" style="background:{color}">{escape(outcome)}</span>'


def _check(ok: bool) -> str:
    return '<span class="ok">ok</span>' if ok else '<span class="fail">FAIL</span>'


def _table(head: list[str], rows: list[list[str]], num: tuple[int, ...] = (), row_class=None, table_id: str = "") -> str:
    """``rows`` hold HTML already escaped."""
    cells = "".join(f'<th class="num">{escape(h)}</th>' if i in num else f"<th>{escape(h)}</th>" for i, h in enumerate(head))
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{row_class(n)}"' if row_class and row_class(n) else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>"
                                           for i, c in enumerate(row)) + "</tr>")
    attr = f' id="{table_id}"' if table_id else ""
    return f"<table{attr}><thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _page(title: str, meta: dict, body: list[str]) -> str:
    command = meta.get("command")
    head = [f"<h1>{escape(title)}</h1>"]
    if command:
        head.append(f'<p class="meta">command: <code>{escape(command)}</code></p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
            + "".join(head) + "".join(body) + "</body></html>\n")


def window_svg(window) -> str:
    """A critical window drawn for the page: ``sequence_svg``'s figure with its text as <text>
    instead of glyph paths, which makes a 50-run campaign's page 7 times smaller and 3 times
    faster to write."""
    return sequence_svg.to_svg(window, text_as_paths=False)


def _windows(windows: list, prefix: str, note: str) -> str:
    """Each critical window as SVG, with its Mermaid text (for pasting into an issue) folded below."""
    if not windows:
        return f'<p class="none">{escape(note or "no sequence diagram")}</p>'
    parts = []
    for i, window in enumerate(windows):
        title = f"critical window {i + 1} of {len(windows)}"
        if window.steps:  # where it is, for `hsmproxy decode TRACE` (a kept run's traces)
            first, last = window.steps[0].where, window.steps[-1].where
            title += f": {window.describe(first)} to {window.describe(last)}"
        parts.append(f"<figure><figcaption>{escape(title)}</figcaption>"
                     f'<div class="diagram">{inline_svg(window_svg(window), f"{prefix}-w{i}")}</div>'
                     f'<details class="mermaid"><summary>Mermaid text (GitHub renders it in issues)</summary>'
                     f"<pre>{escape(to_mermaid(window))}</pre></details></figure>")
    return "".join(parts)


# ---- simulated sessions: stories and campaigns ---------------------------------------------------

def _who(r: RunResult) -> str:
    return f"{r.signer}, retry-same {r.signer_policy}" if r.signer_policy else r.signer


def _story_heading(r: RunResult) -> str:
    if r.scenario == "pretend-crash" and r.signer == "sim-signer":
        return "pretend-crash, retry-same " + ("warn-only" if r.signer_policy == WARN else "enforced")
    return r.scenario


def _discipline(r: RunResult) -> str:
    scenario = BUILTIN.get(r.scenario)
    text = {"naive": "naive: signs, then saves", "wal": "write-ahead: saves the intent, then signs"}.get(r.discipline,
                                                                                                       r.discipline)
    return text + ("; compromised, with an attacker peer" if scenario is not None and scenario.attacker else "")


def _signer_did(r: RunResult) -> str:
    if r.signer_rejections:
        return "refused: " + ", ".join(r.signer_rejections)
    twice = sorted({d["index"] for d in r.divergences if d["kind"] == "double_signed" and d.get("status") == "confirmed"})
    if twice:
        return "signed commitment " + ", ".join(map(str, twice)) + " twice"
    return "signed everything it was asked"


def stories_side_by_side(results: list[RunResult]) -> str:
    """The write-up's table, from the real runs: one column per story (and seed, when a story
    ran with several)."""
    headings = [_story_heading(r) for r in results]
    if len(set(headings)) < len(headings):
        headings = [f"{h}, seed {r.seed}" for h, r in zip(headings, results)]
    rows = [
        ("node discipline", _discipline),
        ("fault", lambda r: describe_faults(r) if r.faults else "none: the node pretends to crash"),
        ("what the proxy flagged", lambda r: ", ".join(r.flagged) or "nothing"),
        ("what the signer did", _signer_did),
        ("funds lost", lambda r: f"{r.funds_lost_msat:,} msat" if r.funds_lost_msat else "none"),
    ]
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    body = [f"<tr><th>{escape(label)}</th>" + "".join(f"<td>{escape(cell(r))}</td>" for r in results) + "</tr>"
            for label, cell in rows]
    body.append("<tr><th>outcome</th>" + "".join(f"<td>{_badge(r.outcome)} {_check(r.ok)}</td>" for r in results)
                + "</tr>")
    return f'<table class="stories"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _items(items: list[str]) -> str:
    """A list for a table cell that breaks between items, never inside one."""
    return ", ".join(f'<span class="nw">{escape(item)}</span>' for item in items) or "-"


def outcome_table(results: list[RunResult]) -> str:
    rows = []
    for i, r in enumerate(results):
        signer = [r.signer] + ([f"retry-same {r.signer_policy}"] if r.signer_policy else [])
        rows.append([f'<a href="#run-{i}">{escape(r.scenario)} {r.seed}</a>', _items(signer), escape(r.discipline),
                     str(len(r.faults)), str(r.restarts), _items(r.flagged), _items(r.signer_rejections),
                     f"{r.funds_lost_msat:,}",
                     f"{_badge(r.outcome)} {_check(r.ok)}", f"{r.duration_s:.1f}"])
    return _table(["run", "signer", "discipline", "faults", "restarts", "proxy flagged",
                   "signer refused", "msat lost", "outcome", "s"], rows, num=(3, 4, 7, 9),
                  row_class=lambda n: "failed" if not results[n].ok else "", table_id="outcomes")


def campaign_plots(results: list[RunResult]) -> str:
    by_scenario: dict[str, Counter] = {}
    for r in results:
        by_scenario.setdefault(r.scenario, Counter())[r.outcome] += 1
    faults = Counter((f["point"], f["action"]) for r in results for f in r.faults)
    per_run = [(str(r.seed), dict(Counter(d["kind"] if d.get("status") == "confirmed" else f"{d['kind']} ({d.get('status')})"
                                          for d in r.divergences))) for r in results]
    figures = [
        plots.outcomes_by_group({s: dict(c) for s, c in by_scenario.items()},
                                   {o: OUTCOME_COLORS[o] for o in OUTCOMES}),
        plots.faults_by_point_and_action(dict(faults), POINTS),
        plots.divergences_per_run(per_run),
    ]
    return '<div class="plots">' + "".join(f"<figure>{inline_svg(svg, f'plot{i}')}</figure>"
                                           for i, svg in enumerate(figures)) + "</div>"


def _run_section(i: int, r: RunResult, open_: bool) -> str:
    parts = [f'<details class="run" id="run-{i}"{" open" if open_ else ""}><summary>{escape(r.scenario)} seed {r.seed}'
             f" · {escape(_who(r))} · {_badge(r.outcome)} {_check(r.ok)} <span class=\"count\">· {len(r.faults)} fault(s), "
             f"{r.restarts} restart(s), {len(r.divergences)} divergence event(s)</span></summary>",
             f"<p>{escape(narrate(r))}</p>"]
    if not r.ok:
        why = [f"{v['invariant']}: {v['detail']}" for v in r.violations] + r.misses
        parts.append('<p class="fail">' + "<br>".join(escape(w) for w in why) + "</p>")
    parts.append("<h3>fault schedule</h3>")
    plan = [rule.strip() for rule in r.fault_plan.split(";") if rule.strip()]
    parts.append("<pre>" + escape("\n".join(plan)) + "</pre>" if plan else '<p class="none">no fault planned</p>')
    if r.faults:
        parts.append(_table(["incarnation", "rule", "point", "message", "seq", "action", "detail"],
                            [[str(f["incarnation"]), escape(f["rule"]), escape(f["point"]), escape(f["message"]),
                              str(f["seq"]), escape(f["action"]), escape(f.get("detail") or "")] for f in r.faults],
                            num=(0, 4)))
    elif plan:
        parts.append('<p class="none">no fault fired</p>')
    parts.append("<h3>divergences</h3>")
    if r.divergences:
        parts.append(_table(["kind", "status", "channel", "commitment", "detail"],
                            [[escape(d["kind"]), escape(str(d.get("status"))), escape(str(d.get("dbid"))),
                              escape(str(d.get("index"))), escape(str(d.get("detail") or ""))] for d in r.divergences],
                            num=(2, 3)))
    else:
        parts.append('<p class="none">none flagged</p>')
    parts.append(f"<h3>replay</h3><pre>{escape(r.reproduce)}</pre>")
    parts.append(f'<p class="meta">fault trace hash <code>{escape(r.fault_trace_hash)}</code>'
                 + (f"; kept: <code>{escape(r.workdir)}</code>" if r.workdir else "") + "</p>")
    parts.append("<h3>sequence diagram</h3>" + _windows(r.windows, f"run{i}", r.windows_note))
    parts.append("</details>")
    return "".join(parts)


def session_html(results: list[RunResult], meta: dict | None = None) -> str:
    meta = meta or {}
    s = summary(results)
    stories = bool(results) and all(r.scenario in BUILTIN for r in results)
    title = "hsmproxy chaos: the write-up's stories" if stories else "hsmproxy chaos campaign"
    counts = ", ".join(f"{n} {o}" for o, n in s["outcomes"].items() if n)
    body = [f'<p class="meta">{s["runs"]} run(s): {escape(counts)}; {s["faults"]} fault(s), {s["restarts"]} restart(s), '
            f'{s["divergences"]} divergence(s), {s["funds_lost_msat"]:,} msat lost; '
            + (f'<span class="fail">{s["failed"]} failed</span>' if s["failed"] else '<span class="ok">none failed</span>')
            + "</p>"]
    side_by_side = stories and len(results) <= SIDE_BY_SIDE_UP_TO
    if side_by_side:
        body += ["<h2>the stories side by side</h2>", stories_side_by_side(results)]
    else:  # plots first: people would rather look at them than read 50 rows
        body += ["<h2>plots</h2>", campaign_plots(results)]
    body += ["<h2>outcomes</h2>", outcome_table(results)]
    body.append("<h2>runs</h2>")
    open_all = len(results) <= OPEN_ALL_UP_TO
    body += [_run_section(i, r, open_all or not r.ok) for i, r in enumerate(results)]
    return _page(title, meta, body)


def write_session_html(path: str, results: list[RunResult], meta: dict | None = None) -> None:
    write_text(path, session_html(results, meta))


# ---- crash sweeps against real Core Lightning ----------------------------------------------------

def _cycle_section(i: int, r: CycleResult, open_: bool) -> str:
    parts = [f'<details class="run" id="cycle-{i}"{" open" if open_ else ""}><summary>{escape(r.spec)} · '
             f"{_badge(r.outcome)} {_check(r.ok)}</summary>", f"<p>{escape(narrate_cycle(r))}</p>"]
    if r.reasons:
        parts.append('<p class="fail">' + "<br>".join(escape(x) for x in r.reasons) + "</p>")
    parts.append("<h3>fault</h3>" + (f"<pre>{escape(r.fault)}</pre>" if r.fault else '<p class="none">none armed</p>'))
    if r.fired is not None:
        f = r.fired
        parts.append(_table(["rule", "action", "point", "message", "seq", "commitment"],
                            [[escape(f.rule), escape(f.action), escape(f.point), escape(f.message), str(f.seq),
                              escape("" if f.index is None else str(f.index))]], num=(4, 5)))
    parts.append("<h3>divergences</h3>")
    if r.divergences:
        parts.append(_table(["node", "kind", "status", "channel", "commitment", "detail"],
                            [[escape(str(d.get("node"))), escape(d["kind"]), escape(str(d.get("status"))),
                              escape(str(d.get("dbid"))), escape(str(d.get("index"))), escape(str(d.get("detail") or ""))]
                             for d in r.divergences], num=(3, 4)))
    else:
        parts.append('<p class="none">none flagged</p>')
    if r.payments:
        parts.append("<h3>payments</h3>" + _table(
            ["phase", "payer", "payee", "msat", "kind", "status", "interrupted"],
            [[escape(p.phase), escape(p.payer), escape(p.payee), f"{p.amount_msat:,}", escape(p.kind),
              escape(p.status + (f" ({p.later})" if p.later else "")), "yes" if p.interrupted else ""]
             for p in r.payments], num=(3,)))
    parts.append(f"<h3>replay</h3><pre>{escape(r.replay)}</pre>")
    parts.append("<h3>sequence diagram</h3>" + _windows(r.windows, f"cycle{i}", r.windows_note))
    parts.append("</details>")
    return "".join(parts)


def sweep_html(report: SweepReport, meta: dict | None = None) -> str:
    results = report.results
    outcomes = Counter(r.outcome for r in results)
    counts = ", ".join(f"{outcomes[o]} {o}" for o in CYCLE_OUTCOMES if outcomes[o])
    body = [f'<p class="meta">Core Lightning {escape(report.lightningd_version or "?")}; {len(results)} crash cycle(s): '
            f"{escape(counts)}; {report.cycles_s:.1f} s after {report.setup_s:.1f} s of set-up "
            f"({report.cycles_per_s:.2f} cycles/s)"
            + (f"; kept: <code>{escape(report.directory)}</code>" if report.directory else "") + "</p>"]
    rows = []
    for i, r in enumerate(results):
        index = r.fired.index if r.fired is not None and r.fired.index is not None else ""
        interrupted = "; ".join(f"{p.kind} {p.payer}->{p.payee}: {p.status}" for p in r.payments if p.interrupted)
        flagged = _items([f"{d['kind']} ({d['status']}, {d.get('node')})" for d in r.divergences])
        rows.append([f'<a href="#cycle-{i}">{escape(r.node)}</a>', escape(r.message.removeprefix("hsmd_")),
                     escape(r.point), escape(str(index)), escape(interrupted or "-"), f"{_badge(r.outcome)} {_check(r.ok)}",
                     flagged, f"{r.duration_s:.1f}"])
    body += ["<h2>outcomes</h2>",
             _table(["node", "request", "point", "commit", "interrupted payment", "outcome", "proxy flagged", "s"],
                    rows, num=(3, 7), row_class=lambda n: "failed" if not results[n].ok else "", table_id="outcomes")]
    by_node: dict[str, Counter] = {}
    for r in results:
        by_node.setdefault(f"{r.node} killed", Counter())[r.outcome] += 1
    if results:
        body += ["<h2>plots</h2>", '<div class="plots"><figure>' + inline_svg(plots.outcomes_by_group(
            {n: dict(c) for n, c in by_node.items()}, {o: OUTCOME_COLORS[o] for o in CYCLE_OUTCOMES}, "crash cycles by outcome per killed node"),
            "plot0")
                 + "</figure></div>"]
    body.append("<h2>crash cycles</h2>")
    open_all = len(results) <= OPEN_ALL_UP_TO
    body += [_cycle_section(i, r, open_all or not r.ok) for i, r in enumerate(results)]
    return _page("hsmproxy chaos: crash sweep against Core Lightning", meta or {}, body)


def write_sweep_html(path: str, report: SweepReport, meta: dict | None = None) -> None:
    write_text(path, sweep_html(report, meta))
