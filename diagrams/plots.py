"""A chaos campaign's plots as standalone SVG (matplotlib, no display and no browser needed):
runs by outcome per scenario, faults by point and action, divergences per run.

Each function takes plain counts (the HTML report computes them from its results) and returns
the text of one ``<svg>`` element. Text stays text (``TEXT_AS_TEXT``): a font of the reader's
machine draws it, nothing is fetched.
"""

from __future__ import annotations

import io

import matplotlib
from matplotlib.figure import Figure

# Text as <text> elements, not glyph paths (smaller, selectable, crisp), in DejaVu Sans (which
# matplotlib measures with) or, where the reader's machine lacks it, any sans-serif font.
TEXT_AS_TEXT = {"svg.fonttype": "none", "font.family": ["sans-serif"], "font.sans-serif": ["DejaVu Sans"]}
_STYLE = {
    **TEXT_AS_TEXT,
    "svg.hashsalt": "hsmproxy",  # the same input draws the same file
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")


def svg_text(fig: Figure, tight: bool = True) -> str:
    """The figure as SVG, without the XML prolog (it goes inline into HTML). ``tight`` crops it
    to what was drawn, at the price of drawing it twice."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight" if tight else None, metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(width_in: float, height_in: float) -> Figure:
    return Figure(figsize=(width_in, height_in), layout="constrained")


def outcomes_by_group(counts: dict[str, dict[str, int]], colors: dict[str, str],
                      title: str = "runs by outcome per scenario") -> str:
    """One horizontal bar per group (a scenario; a sweep's killed node), split by outcome
    (``counts[group][outcome]``), drawn in ``colors``' order and colors."""
    with matplotlib.rc_context(_STYLE):
        scenarios = list(counts)
        fig = _figure(4.6, 0.9 + 0.38 * len(scenarios))
        ax = fig.add_subplot()
        left = [0] * len(scenarios)
        for outcome, color in colors.items():
            widths = [counts[s].get(outcome, 0) for s in scenarios]
            if not any(widths):
                continue
            bars = ax.barh(scenarios, widths, left=left, color=color, label=outcome, height=0.6)
            ax.bar_label(bars, labels=[str(w) if w else "" for w in widths], label_type="center", color="white",
                         fontsize=9, fontweight="bold")
            left = [a + b for a, b in zip(left, widths)]
        ax.invert_yaxis()
        ax.set_xlabel("runs")
        ax.set_title(title, loc="left", fontsize=11)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=9)
        return svg_text(fig)


def faults_by_point_and_action(counts: dict[tuple[str, str], int], points: tuple[str, ...]) -> str:
    """A table of counts (``counts[(point, action)]``): one row per action, one column per
    point, darker where more faults fired. Every point of ``points`` gets its column."""
    with matplotlib.rc_context(_STYLE):
        actions = sorted({action for _, action in counts})
        fig = _figure(4.6, 1.2 + 0.32 * max(1, len(actions)))
        ax = fig.add_subplot()
        if not actions:
            ax.text(0.5, 0.5, "no fault fired", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        else:
            grid = [[counts.get((point, action), 0) for point in points] for action in actions]
            top = max(max(row) for row in grid) or 1
            # pcolormesh, not imshow: cells as vector paths; imshow would embed a PNG
            ax.pcolormesh(grid, cmap="Blues", vmin=0, vmax=top * 1.25, edgecolors="white", linewidth=1)
            ax.invert_yaxis()
            for i, row in enumerate(grid):
                for j, n in enumerate(row):
                    if n:
                        ax.text(j + 0.5, i + 0.5, str(n), ha="center", va="center", fontsize=9,
                                color="white" if n > top * 0.6 else "black")
            ax.set_xticks([j + 0.5 for j in range(len(points))], [p.replace(".", ".\n") for p in points], fontsize=9)
            ax.set_yticks([i + 0.5 for i in range(len(actions))], actions)
            ax.tick_params(length=0)
            for side in ("left", "bottom"):
                ax.spines[side].set_visible(False)
        ax.set_title("faults by point and action", loc="left", fontsize=11)
        return svg_text(fig)


def divergences_per_run(runs: list[tuple[str, dict[str, int]]]) -> str:
    """One bar per run (``(label, {divergence: count})``), stacked by divergence."""
    with matplotlib.rc_context(_STYLE):
        kinds = list(dict.fromkeys(kind for _, per_kind in runs for kind in per_kind))
        fig = _figure(4.6, 2.4)
        ax = fig.add_subplot()
        labels = [label for label, _ in runs]
        bottom = [0] * len(runs)
        for i, kind in enumerate(kinds):
            heights = [per_kind.get(kind, 0) for _, per_kind in runs]
            ax.bar(labels, heights, bottom=bottom, color=_PALETTE[i % len(_PALETTE)], label=kind, width=0.7)
            bottom = [a + b for a, b in zip(bottom, heights)]
        if not kinds:
            ax.text(0.5, 0.5, "no divergence flagged", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel("divergences")
        ax.set_xlabel("seed")
        ax.yaxis.get_major_locator().set_params(integer=True)
        if len(labels) > 20:  # 50 seeds: every fifth label keeps them apart
            ax.set_xticks(range(0, len(labels), 5), labels[::5])
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title("divergences per run", loc="left", fontsize=11)
        if kinds:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=2, frameon=False, fontsize=9)
        return svg_text(fig)
