"""A ``Sequence`` as Mermaid ``sequenceDiagram`` text (GitHub renders it in issues and markdown).

Every label goes through ``escape``: in Mermaid's sequence grammar a message or note text runs
from the colon to the end of the line, and ends early at ``;`` (a statement separator) or ``#``
(a comment), while ``#NNN;`` is an entity code (decimal). So anything but letters, digits, spaces
and a few harmless marks is written as an entity code: ``;``, ``#``, ``:``, ``%``, ``<``, ``>``
(no HTML), ``&``, quotes, braces, line breaks and other control or invisible characters. Lines of
a note are joined with ``<br/>``, the only markup written. Faults, kills, restarts and
divergences are notes in a shaded ``rect`` so they stand out.
"""

from __future__ import annotations

import unicodedata

from diagrams.sequence import (
    DIVERGENCE,
    FAULT,
    KILL,
    RESTART,
    VERDICT,
    Message,
    Sequence,
)

_IDS = {"node": "N", "proxy": "P", "signer": "S"}
_KEEP = frozenset(" .,_-()/=+*[]!?'|@$^~`")
_SHADES = {  # note kind -> rect background
    FAULT: "rgb(255, 221, 221)",
    VERDICT: "rgb(255, 221, 221)",
    KILL: "rgb(225, 225, 225)",
    RESTART: "rgb(221, 235, 255)",
    DIVERGENCE: "rgb(255, 240, 200)",
}


def escape(text: str) -> str:
    """``text`` safe as one Mermaid sequence-diagram label: it renders as the same characters."""
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char in _KEEP):
            out.append(char)
        elif not char.isascii() and unicodedata.category(char)[0] in "LNPS":  # printable: →, …, ×
            out.append(char)
        else:
            out.append(f"#{ord(char)};")
    return "".join(out)


def to_mermaid(seq: Sequence) -> str:
    """The diagram as Mermaid text, ending with a newline (no ```mermaid fence)."""
    lines = ["sequenceDiagram"]
    if seq.title and seq.title.strip():
        lines.append(f"    title {escape(seq.title.strip())}")
    for lane in seq.lanes:
        lines.append(f"    participant {_IDS[lane.key]} as {escape(lane.title)}")
    for step in seq.steps:
        if isinstance(step, Message):
            arrow = "-->>" if step.reply else "->>"
            lines.append(f"    {_IDS[step.sender]}{arrow}{_IDS[step.receiver]}: {escape(step.label)}")
            continue
        text = "<br/>".join(escape(line) for line in step.lines)
        note = f"Note over {','.join(_IDS[lane] for lane in step.lanes)}: {text}"
        shade = _SHADES.get(step.kind)
        if shade is None:
            lines.append(f"    {note}")
        else:
            lines += [f"    rect {shade}", f"        {note}", "    end"]
    return "\n".join(lines) + "\n"
