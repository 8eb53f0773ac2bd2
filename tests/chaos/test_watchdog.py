"""The runner's watchdog: a node that can only wait is ended as soon as that is certain."""

from __future__ import annotations

import dataclasses

import trio

from chaos.runner import run_spec
from chaos.schedule import schedule_for
from chaos.specs import campaign_spec

DROP_SEED = 20  # its third rule drops a request: the node waits for an answer that never comes


async def test_a_dropped_request_ends_the_incarnation_at_once_not_after_the_timeout(tmp_path):
    assert any(f.action == "drop" for f in schedule_for(DROP_SEED))
    spec = dataclasses.replace(campaign_spec(DROP_SEED), incarnation_timeout=3600)
    with trio.fail_after(120):  # far below the hour the old watchdog would have waited
        result = await run_spec(spec, tmp_path)
    assert result.ok and result.outcome == "converged"
    assert "drop" in {f["action"] for f in result.faults} and result.restarts >= 1
