"""The critical windows of a run's sequence diagram, cut from its proxy traces while they exist.

A run's directory (and its traces) is removed when the run ends unless ``--keep`` says
otherwise, so the HTML report cannot read them later: the runner (and the sweep, per crash
cycle) calls this first and keeps only the windows around the faults and divergences, which
stay small for a campaign of many runs.
"""

from __future__ import annotations

from pathlib import Path

from diagrams.sequence import critical_windows, sequence_from_traces
from proxy.addons.trace import TraceFormatError


def windows_from_traces(traces: list[str | Path], channel: int | None = None,
                        start: int | None = None) -> tuple[list, str]:
    """(the windows, why there are none): the traces that exist, read in order, from record
    ``start`` of the first on (``hsmproxy decode``'s numbering). A trace that cannot be read is no
    reason to lose the run's report: it is named instead."""
    paths = [str(p) for p in traces if Path(p).exists()]
    if not paths:
        return [], "no sequence diagram: no proxy trace was written (the proxy never started)"
    try:
        sequence = sequence_from_traces(paths, channel=channel, start=start)
    except (OSError, TraceFormatError, ValueError) as exc:
        return [], f"no sequence diagram: the proxy traces could not be read ({exc})"
    windows = critical_windows(sequence)
    if not windows:
        return [], "no sequence diagram: no fault fired and no divergence was flagged"
    return windows, ""
