"""Real chaos story runs (node, proxy and signer processes) whose traces the diagram tests draw."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio

from chaos.runner import run_spec
from chaos.scenarios import scenario_named
from chaos.specs import scenario_spec
from tests.diagrams.mermaid_js import MermaidParser, available

# name -> (scenario, extra `hsmproxy wrap` arguments)
RUNS = {
    "honest-crash": ("honest-crash", ()),
    "wal-fix": ("wal-fix", ()),
    "wal-fix-secrets": ("wal-fix", ("--trace-secrets",)),  # traces that hold every secret (revocations)
}


@pytest.fixture(scope="session")
def story_traces(tmp_path_factory) -> dict[str, list[Path]]:
    """Each run's traces, one per proxy incarnation, in order (``trace-0.mp``, ``trace-1.mp``)."""
    workdir = tmp_path_factory.mktemp("stories")
    results = {}

    async def run(name: str, scenario: str, extra: tuple[str, ...]) -> None:
        spec = replace(scenario_spec(scenario_named(scenario)), extra_wrap_args=extra)
        results[name] = await run_spec(spec, workdir / name, keep="all")

    async def main() -> None:
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                for name, (scenario, extra) in RUNS.items():
                    nursery.start_soon(run, name, scenario, extra)

    trio.run(main)
    traces = {}
    for name, result in results.items():
        assert result.ok, (name, result)
        traces[name] = sorted(Path(result.workdir).glob("logs/trace-*.mp"))
        assert len(traces[name]) == 2, traces[name]  # the crash, then the restart
    return traces


@pytest.fixture(scope="session")
def mermaid_js():
    """Mermaid's parser, or a skip saying how to get it."""
    if not available():
        pytest.skip("node or the mermaid npm package is missing: `scripts/setup --test` installs it "
                    "(npm install in tests/diagrams/mermaid_parser)")
    parser = MermaidParser()
    yield parser
    parser.close()
