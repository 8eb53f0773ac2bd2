"""A ``Sequence`` drawn as a standalone SVG with matplotlib.

Why matplotlib: a well-kept plotting library that writes SVG offline and deterministically (the
HTML report draws its plots with it too), so nothing here hand-writes SVG. The output:

* is self-contained: glyphs are paths (``svg.fonttype = path``, DejaVu Sans, which matplotlib
  ships), no font, image or stylesheet is referenced;
* is the same bytes for the same sequence and matplotlib version (``svg.hashsalt`` fixed, no
  date in the metadata);
* starts at ``<svg`` (no XML declaration or DOCTYPE), so it can be written to a ``.svg`` file or
  put inline in an HTML page as it is.

Lanes have headers and lifelines; requests are solid arrows, replies dashed ones; notes are
boxes shaded by kind (faults and verdicts red, kills grey, restarts blue, divergences amber).
"""

from __future__ import annotations


import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from diagrams.plots import TEXT_AS_TEXT, svg_text
from diagrams.sequence import (
    CHATTER,
    DIVERGENCE,
    EXIT,
    FAULT,
    GAP,
    KILL,
    RESTART,
    VERDICT,
    Message,
    Sequence,
)

LANE_GAP = 3.4  # inches between two lifelines
MARGIN = 1.6  # inches left and right of the outer lifelines
HEADER = 0.9  # inches above the first step (title and lane headers)
MESSAGE_ROW = 0.38
LINE = 0.16  # one line of a note
NOTE_PAD = 0.14
FONT = 7.5
CHAR_WIDTH = 0.058  # inches per character at FONT, for sizing note boxes

NOTE_COLOURS = {  # kind -> (face, edge)
    FAULT: ("#ffdddd", "#c62828"),
    VERDICT: ("#ffdddd", "#c62828"),
    KILL: ("#e1e1e1", "#424242"),
    RESTART: ("#ddebff", "#1565c0"),
    DIVERGENCE: ("#fff0c8", "#b26a00"),
    EXIT: ("#f5f5f5", "#757575"),
    CHATTER: ("#fafafa", "#bdbdbd"),
    GAP: ("#ffffff", "#9e9e9e"),
}
RC = {
    "svg.hashsalt": "hsmproxy-sequence",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "path.simplify": False,
}


def to_svg(seq: Sequence, *, text_as_paths: bool = True) -> str:
    """The diagram as SVG text (``<svg ...>...</svg>``). ``text_as_paths=False`` keeps text as
    <text> (``plots.TEXT_AS_TEXT``): much smaller, for pages that hold many diagrams."""
    with matplotlib.rc_context(RC if text_as_paths else {**RC, **TEXT_AS_TEXT}):
        return svg_text(figure(seq), tight=False)  # its size is its content's


def _row_height(step) -> float:
    return MESSAGE_ROW if isinstance(step, Message) else len(step.lines) * LINE + 2 * NOTE_PAD + 0.08


def figure(seq: Sequence) -> Figure:
    """The matplotlib figure of the diagram (call it inside ``matplotlib.rc_context(RC)``)."""
    xs = {lane.key: MARGIN + i * LANE_GAP for i, lane in enumerate(seq.lanes)}
    width = 2 * MARGIN + (len(seq.lanes) - 1) * LANE_GAP
    height = HEADER + sum(_row_height(step) for step in seq.steps) + 0.3
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")

    if seq.title:
        ax.text(width / 2, 0.22, seq.title, ha="center", va="center", fontsize=FONT + 2, fontweight="bold")
    for lane in seq.lanes:
        x = xs[lane.key]
        ax.add_patch(FancyBboxPatch((x - 0.6, HEADER - 0.45), 1.2, 0.3, boxstyle="round,pad=0.02",
                                    facecolor="#eceff1", edgecolor="#37474f", linewidth=0.8))
        ax.text(x, HEADER - 0.3, lane.title, ha="center", va="center", fontsize=FONT + 1, fontweight="bold")
        ax.plot([x, x], [HEADER - 0.15, height - 0.1], color="#90a4ae", linewidth=0.8, linestyle=(0, (4, 3)),
                zorder=0)

    y = HEADER
    for step in seq.steps:
        row = _row_height(step)
        if isinstance(step, Message):
            x0, x1 = xs[step.sender], xs[step.receiver]
            arrow_y = y + row - 0.1
            ax.annotate("", xy=(x1, arrow_y), xytext=(x0, arrow_y),
                        arrowprops=dict(arrowstyle="-|>", color="#263238", linewidth=0.9,
                                        linestyle="--" if step.reply else "-", shrinkA=0, shrinkB=0))
            ax.text((x0 + x1) / 2, arrow_y - 0.05, step.label, ha="center", va="bottom", fontsize=FONT)
        else:
            lanes = [xs[key] for key in step.lanes]
            text_width = max(len(line) for line in step.lines) * CHAR_WIDTH + 0.3
            left, right = min(lanes) - 0.5, max(lanes) + 0.5
            if right - left < text_width:
                middle = (left + right) / 2
                left, right = middle - text_width / 2, middle + text_width / 2
            face, edge = NOTE_COLOURS.get(step.kind, ("#ffffff", "#757575"))
            box_h = row - 0.08
            ax.add_patch(FancyBboxPatch((left, y + 0.04), right - left, box_h, boxstyle="round,pad=0.0,rounding_size=0.06",
                                        facecolor=face, edgecolor=edge, linewidth=0.8, zorder=2))
            style = "italic" if step.kind in (CHATTER, GAP) else "normal"
            ax.text((left + right) / 2, y + 0.04 + box_h / 2, "\n".join(step.lines), ha="center", va="center",
                    fontsize=FONT, fontstyle=style, linespacing=1.35, zorder=3)
        y += row
    return fig
