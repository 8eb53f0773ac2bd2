"""Mermaid text: escaping any label (Hypothesis), the real story's diagram, and Mermaid's own
parser when node and the mermaid npm package are installed."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from diagrams.mermaid import escape, to_mermaid
from diagrams.sequence import (
    DIVERGENCE,
    FAULT,
    NODE,
    PROXY,
    SIGNER,
    Message,
    Note,
    Sequence,
    Where,
    critical_windows,
    join_windows,
    lanes_of,
    sequence_from_traces,
)
from tests.diagrams.mermaid_js import shown
from tests.paths import ROOT

ENTITY = re.compile(r"#(\d+);")
# A message or note line as Mermaid's grammar reads it: the text runs from the colon to the end of
# the line and must hold no ';' or '#' except in entity codes.
TEXT = r"(?:[^#;\n:<>%]|#\d+;)*"
NOTE = r"(?:[^#;\n:<>%]|#\d+;|<br/>)*"  # a note's lines are joined with <br/>, the only markup
LINE = re.compile(rf"^    (?:[NPS](?:->>|-->>)[NPS]: {TEXT}|Note over [NPS](?:,[NPS])?: {NOTE})$")
HEAD = re.compile(rf"^(?:sequenceDiagram|    title {TEXT}|    participant [NPS] as {TEXT}|    rect rgb\(\d+, \d+, \d+\)|"
                  rf"    end|        Note over [NPS](?:,[NPS])?: {NOTE})$")


def unescape(text: str) -> str:
    return ENTITY.sub(lambda m: chr(int(m.group(1))), text)


def one_of_each(label: str, note: list[str], title: str | None = None) -> Sequence:
    where = Where(0, 1)
    steps = (Message(NODE, SIGNER, label, where), Message(SIGNER, NODE, label, where, reply=True),
             Note((PROXY,), tuple(note), FAULT, where), Note((NODE, SIGNER), tuple(note), DIVERGENCE, where))
    return Sequence(lanes_of(steps), steps, title)


labels = st.text(min_size=1, max_size=40)


@given(labels)
def test_escape_keeps_the_text_and_leaves_no_syntax(label):
    escaped = escape(label)
    assert unescape(escaped) == label
    assert not set(ENTITY.sub("", escaped)) & set(";#:\n\r%<>&\"{}")


@given(labels, st.lists(labels, min_size=1, max_size=3), st.none() | labels)
def test_any_label_gives_well_formed_lines(label, note, title):
    text = to_mermaid(one_of_each(label, note, title))
    lines = text.splitlines()
    assert text.endswith("\n") and lines[0] == "sequenceDiagram"
    for line in lines[1:]:
        assert LINE.match(line) or HEAD.match(line), line
    messages = [line.split(": ", 1)[1] for line in lines if LINE.match(line) and "Note" not in line]
    assert [unescape(m) for m in messages] == [label, label]
    note_texts = [line.split(": ", 1)[1] for line in lines if "Note over" in line]
    assert [[unescape(part) for part in t.split("<br/>")] for t in note_texts] == [note, note]


def test_the_honest_crash_diagram(story_traces):
    seq = sequence_from_traces(story_traces["honest-crash"], title="honest-crash: naive node, validating signer")
    text = to_mermaid(join_windows(seq, critical_windows(seq)))
    assert text.startswith("sequenceDiagram\n    title honest-crash#58; naive node, validating signer\n")
    assert "    participant N as node\n    participant P as hsmproxy\n    participant S as signer\n" in text
    assert "    N->>S: sign_remote_commitment_tx ch1 #35;1\n    S-->>P: reply to sign_remote_commitment_tx ch1 #35;1\n" in text
    assert "rect rgb(255, 221, 221)\n        Note over P: fault kill-node at reply.before_forward<br/>" in text
    assert "Note over N,S: node killed (SIGKILL)" in text and "Note over N,S: restart#58; trace-1.mp" in text
    assert "retry_changed #35;1#58; predicted → confirmed" in text
    assert "    S-->>N: refused sign_remote_commitment_tx ch1 #35;1\n" in text


def test_mermaid_parses_the_real_diagram(story_traces, mermaid_js):
    for name in ("honest-crash", "wal-fix"):
        seq = sequence_from_traces(story_traces[name], title=name)
        for view in (seq, join_windows(seq, critical_windows(seq))):
            answer = mermaid_js.parse(to_mermaid(view))
            assert answer["ok"], answer["error"]
            assert answer["actors"] == [lane.title for lane in view.lanes] and answer["title"] == name
            texts = [shown(m["text"]) for m in answer["messages"] if m.get("from")]
            expected = [s.label if isinstance(s, Message) else "<br/>".join(s.lines) for s in view.steps]
            assert texts == expected


def test_mermaid_rejects_what_escaping_prevents(mermaid_js):
    """The check can fail: the raw characters escaping removes do break a diagram."""
    assert not mermaid_js.parse("sequenceDiagram\n    N->>S: a;b #1\n")["ok"]


@settings(max_examples=150, deadline=None)
@given(labels, st.lists(labels, min_size=1, max_size=3), st.none() | labels)
@example("end", ["end", "loop x"], "end")
@example("wrap:x", ["nowrap: y", "%% no comment"], "%%{init: {}}%%")
@example("a->>b: c", ["Note over N: d", "#quot; #9829; &amp; <b>x</b>"], "x; y # z")
@example("  line\nbreak\r\u2028end  ", ["tab\there", "\x00\x1f\x7f"], "title: t")
def test_mermaid_reads_back_any_label(mermaid_js, label, note, title):
    seq = one_of_each(label, note, title)
    answer = mermaid_js.parse(to_mermaid(seq))
    assert answer["ok"], answer["error"]
    texts = [shown(m["text"]) for m in answer["messages"] if m.get("from")]
    # Mermaid trims a label's ends
    assert texts == [label.strip(" "), label.strip(" ")] + ["<br/>".join(note).strip(" ")] * 2
    if title is not None and title.strip():
        assert shown(answer["title"]) == title.strip()


def test_the_diagrams_in_the_docs_are_well_formed_and_parse(mermaid_js):
    blocks = [block for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
              for block in re.findall(r"```mermaid\n(.*?)```", path.read_text(), re.S)]
    assert blocks, "docs/chaos.md shows the honest crash's diagram"
    for block in blocks:
        for line in block.splitlines()[1:]:
            assert LINE.match(line) or HEAD.match(line), line
        answer = mermaid_js.parse(block)
        assert answer["ok"], answer["error"]
