"""The SVG drawing, and that no secret reaches a diagram even from a trace that holds them all."""

from __future__ import annotations

from xml.etree import ElementTree

import wire
from diagrams.mermaid import to_mermaid
from diagrams.sequence import Message, critical_windows, join_windows, sequence_from_traces
from diagrams.sequence_svg import NOTE_COLOURS, to_svg
from diagrams.sequence import DIVERGENCE, FAULT, KILL, RESTART
from proxy.addons.trace import read_trace


def test_the_svg_is_standalone_deterministic_and_shaded_by_kind(story_traces):
    seq = sequence_from_traces(story_traces["honest-crash"], title="honest-crash")
    svg = to_svg(seq)
    assert svg == to_svg(seq)  # same bytes for the same diagram
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    root = ElementTree.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    for outside in ("<image", "<script", "@import", "@font-face", "url(http", 'href="http', "<text"):
        assert outside not in svg  # glyphs are paths: nothing to fetch, no font needed
    # matplotlib leaves each text as a comment over its glyphs: the lanes, the labels
    for text in ("<!-- node -->", "<!-- hsmproxy -->", "<!-- signer -->", "<!-- honest-crash -->",
                 "<!-- sign_remote_commitment_tx ch1 #1 -->", "<!-- node killed (SIGKILL) -->"):
        assert text in svg
    for kind in (FAULT, KILL, RESTART, DIVERGENCE):
        assert f"fill: {NOTE_COLOURS[kind][0]}" in svg
    window = join_windows(seq, critical_windows(seq, context=1))
    assert to_svg(window) != svg and len(to_svg(window)) < len(svg)


def secrets_in(paths) -> list[bytes]:
    found = []
    for path in paths:
        records = list(read_trace(str(path)))
        assert records[0]["secrets"] and records[0]["frames"] == "raw"
        for record in records:
            if record.get("kind") == "frame" and record.get("raw"):
                message = wire.decode(record["raw"])
                if message.spec is not None:
                    found += [v for name in message.spec.secret_fields
                              if isinstance(v := message.fields.get(name), bytes) and any(v)]
    return found


def test_a_trace_recorded_with_trace_secrets_gives_a_diagram_without_them(story_traces):
    paths = story_traces["wal-fix-secrets"]
    secrets = secrets_in(paths)
    assert len(secrets) >= 3  # the revocations: old commitment secrets, the peer's per-commitment secret
    seq = sequence_from_traces(paths)
    drawn = [to_mermaid(seq), to_mermaid(join_windows(seq, critical_windows(seq))), to_svg(seq)]
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), secret.hex()[:16], repr(secret)[2:18]):
            assert not any(form in text for text in drawn), "a secret reached a diagram"
    # the same story recorded redacted draws the same arrows
    redacted = sequence_from_traces(story_traces["wal-fix"])
    arrows = [(s.sender, s.receiver, s.label) for s in seq.steps if isinstance(s, Message)]
    assert arrows == [(s.sender, s.receiver, s.label) for s in redacted.steps if isinstance(s, Message)]
