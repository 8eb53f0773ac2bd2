"""A pytest plugin for pyln-testing users: run every node's hsmd behind `hsmproxy wrap`.

Installed with ``pip install hsmproxy[cln]`` and registered through the ``pytest11`` entry point;
it does nothing unless ``--hsmproxy`` is given, so it can stay installed next to any test suite.

- ``--hsmproxy`` starts each node's hsmd through a wrapper script in the node's directory
  (``<lightning-dir>/hsmproxy/``: the WAL, one trace per start, the script), without changing the
  tests. lightningd finds it through ``--subdaemon=hsmd:SCRIPT``.
- ``--hsmproxy-fail-on=KINDS`` (default ``double_signed,retry_changed``; ``none`` only reports):
  at teardown a test errors when a node's proxy confirmed a divergence of those kinds.
- ``--hsmproxy-faults`` enables fault injection and a control API per node, for the fixture's
  ``add_fault``.
- The fixture ``hsmproxy`` gives ``hsmproxy(node)``: a handle with ``state()``, ``divergences()``,
  ``add_fault(rule)`` and ``trace_path``.
- The terminal summary lists, per node, channels tracked, requests seen and divergences by kind.
"""

from __future__ import annotations

from collections import Counter

import pytest

DEFAULT_FAIL_ON = "double_signed,retry_changed"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hsmproxy", "hsmproxy: every node's hsmd behind a split-brain detector")
    group.addoption("--hsmproxy", action="store_true",
                    help="wrap every pyln-testing node's hsmd in `hsmproxy wrap` (WAL and traces in the node's directory)")
    group.addoption("--hsmproxy-fail-on", default=DEFAULT_FAIL_ON, metavar="KINDS",
                    help="comma-separated divergence kinds that fail a test when a proxy confirms one "
                         f"(default {DEFAULT_FAIL_ON}; 'none' only reports)")
    group.addoption("--hsmproxy-faults", action="store_true",
                    help="enable fault injection in every proxy, with a control API for hsmproxy(node).add_fault()")
    group.addoption("--hsmproxy-signer", metavar="PATH",
                    help="the signer behind the proxy (default: lightning_hsmd next to the node's lightningd)")


_KEY = pytest.StashKey["HsmproxySession"]()


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--hsmproxy", default=False):
        # Imported only when asked for: this plugin is loaded into every pytest run of every
        # project that has hsmproxy[cln] installed, and must cost those runs nothing.
        from hsmproxy.pyln_session import HsmproxySession

        config.stash[_KEY] = HsmproxySession(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(_KEY, None)
    if plugin is not None:
        plugin.unpatch()


@pytest.fixture(autouse=True)
def _hsmproxy_checks(request: pytest.FixtureRequest):
    """Set up first, torn down last (after node_factory stopped the nodes): fail the test on a
    confirmed divergence of the --hsmproxy-fail-on kinds."""
    session = request.config.stash.get(_KEY, None)
    if session is None:
        yield
        return
    session.begin_test(request.node)
    yield
    failures = session.end_test()
    if failures:
        pytest.fail("hsmproxy confirmed divergences:\n  " + "\n  ".join(failures), pytrace=False)


@pytest.fixture
def hsmproxy(request: pytest.FixtureRequest):
    """``hsmproxy(node)``: the proxy's view of a pyln-testing node (needs --hsmproxy)."""
    plugin = request.config.stash.get(_KEY, None)
    if plugin is None:
        pytest.skip("the hsmproxy fixture needs pytest's --hsmproxy option")

    def handle(node):
        return plugin.handle(getattr(node, "daemon", node))

    return handle


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    session = config.stash.get(_KEY, None)
    if session is None or not session.reports:
        return
    tr = terminalreporter
    tr.section("hsmproxy")
    tr.write_line(f"{'test':<50} {'node':<14} {'channels':>8} {'requests':>8}  divergences")
    totals: Counter = Counter()
    for report in session.reports:
        kinds = Counter(f"{ev['kind']}({ev['status']})" for ev in report.divergences)
        totals.update(kinds)
        shown = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "none"
        tr.write_line(f"{report.test[-50:]:<50} {report.node:<14} {report.channels:>8} {report.requests:>8}  {shown}")
    tr.write_line(f"{len(session.reports)} node(s); divergences: "
                  + (", ".join(f"{k} x{n}" for k, n in sorted(totals.items())) or "none"))
