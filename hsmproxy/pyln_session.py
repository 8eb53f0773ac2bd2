"""What ``--hsmproxy`` does to a pyln-testing run: wrapper scripts at every node start, the
per-node handles of the ``hsmproxy`` fixture, and the divergence checks at teardown.

Imported by ``hsmproxy/pyln_plugin.py`` only when ``--hsmproxy`` is given.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chaos.cln.network import find_hsmd as beside_lightningd
from hsmproxy.control_client import ControlClient
from proxy.addons.trace import TraceFormatError, read_trace
from proxy.core.shadow import DIVERGENCE_KINDS
from proxy.trio.shadow_recovery import wal_view
from proxy.trio.wal_store import wait_released

PROXY_DIR = "hsmproxy"
SCRIPT_NAME = "hsmd-wrapper.sh"


class PluginSetupError(pytest.UsageError):
    pass


def parse_fail_on(text: str) -> frozenset[str]:
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    if kinds == {"none"}:
        return frozenset()
    unknown = sorted(kinds - set(DIVERGENCE_KINDS))
    if unknown:
        raise PluginSetupError(f"--hsmproxy-fail-on: unknown divergence kind(s) {', '.join(unknown)}; "
                               f"choose from {', '.join(DIVERGENCE_KINDS)} or 'none'")
    return kinds


def find_hsmd(lightningd: str) -> Path | None:
    """The lightning_hsmd that this lightningd (a name on PATH or a path) would start."""
    path = shutil.which(lightningd)
    return beside_lightningd(Path(path)) if path is not None else None


@dataclass
class ProxiedNode:
    """What hsmproxy knows about one pyln-testing node (the fixture's handle)."""

    name: str
    directory: Path  # <lightning-dir>/hsmproxy
    control: str | None = None  # control API address when faults are on
    starts: int = 0
    traces: list[Path] = field(default_factory=list)

    @property
    def wal_dir(self) -> Path:
        return self.directory / "wal"

    @property
    def trace_path(self) -> Path | None:
        """The trace of the node's latest start (one trace per start)."""
        return self.traces[-1] if self.traces else None

    def state(self) -> dict:
        """What `hsmproxy state --json` shows: channels, divergences, in-flight and in-doubt
        requests, read from the WAL (works while the proxy runs and after it stopped)."""
        return wal_view(str(self.wal_dir))

    def divergences(self) -> list[dict]:
        return self.state()["divergences"]

    def wait_stopped(self, timeout: float = 30) -> None:
        """After the node stopped or was killed: wait until its proxy has exited, so the WAL holds
        everything the proxy saw (what it flags as the node dies, ``crashed_in_window``, is written
        just after the node's connection ends, a moment after the node is gone)."""
        if not wait_released(str(self.wal_dir), timeout):
            raise TimeoutError(f"{self.name}: the proxy on {self.wal_dir} has not exited {timeout} s after its node")

    def add_fault(self, rule: str) -> list[dict]:
        """Install a fault rule (the one-line syntax, e.g. ``'!hsmd_sign_remote_commitment_tx
        dbid=1 commit_num==5'``) in the node's running proxy. Rules last until the node restarts."""
        if self.control is None:
            raise RuntimeError("hsmproxy(node).add_fault needs pytest's --hsmproxy-faults option")
        return ControlClient(self.control).add(line=rule)

    def requests_seen(self) -> int:
        count = 0
        for path in self.traces:
            try:
                count += sum(1 for rec in read_trace(str(path)) if rec.get("kind") == "frame" and rec.get("dir") == "request")
            except (OSError, TraceFormatError):
                continue
        return count


@dataclass
class NodeReport:
    """One node of one test, as the terminal summary shows it."""

    test: str
    node: str
    channels: int
    requests: int
    divergences: list[dict]


class HsmproxySession:
    """Installed on the config when --hsmproxy is given.

    It patches two places of pyln-testing: ``LightningD.start`` (every start, restarts included,
    gets a fresh wrapper script and trace) and ``NodeFactory.killall`` (once a test's nodes have
    stopped, and before pyln-testing removes their directories, the proxies' WALs and traces are
    read). A test whose proxies confirmed a divergence of the --hsmproxy-fail-on kinds keeps its
    directory (pyln-testing's ``has_errors``) and fails at teardown.
    """

    def __init__(self, config: pytest.Config):
        self.fail_on = parse_fail_on(config.getoption("--hsmproxy-fail-on"))
        self.faults = bool(config.getoption("--hsmproxy-faults"))
        self.signer = config.getoption("--hsmproxy-signer")
        self.nodes: dict[str, ProxiedNode] = {}  # lightning-dir -> handle, for the running test
        self.current_item: pytest.Item | None = None
        self.failures: list[str] = []
        self.reports: list[NodeReport] = []
        try:
            from pyln.testing import utils
        except ImportError as exc:
            raise PluginSetupError(f"--hsmproxy needs pyln-testing ({exc}); install it with `pip install hsmproxy[cln]`")
        self._utils = utils
        self._originals = (utils.LightningD.start, utils.NodeFactory.killall)
        original_start, original_killall = self._originals
        session = self

        def start(daemon, *args, **kwargs):
            session.before_start(daemon)
            return original_start(daemon, *args, **kwargs)

        def killall(factory, *args, **kwargs):
            try:
                return original_killall(factory, *args, **kwargs)
            finally:
                session.after_nodes_stopped(factory.nodes)

        utils.LightningD.start = start
        utils.NodeFactory.killall = killall

    def unpatch(self) -> None:
        self._utils.LightningD.start, self._utils.NodeFactory.killall = self._originals

    def handle(self, daemon) -> ProxiedNode:
        key = str(Path(daemon.lightning_dir).resolve())
        node = self.nodes.get(key)
        if node is None:
            node = ProxiedNode(getattr(daemon, "prefix", Path(key).name), Path(key) / PROXY_DIR)
            self.nodes[key] = node
        return node

    def before_start(self, daemon) -> None:
        """Point lightningd's hsmd at a wrapper script around the real signer (new trace per start)."""
        node = self.handle(daemon)
        signer = self._signer_for(daemon)
        node.directory.mkdir(parents=True, exist_ok=True)
        node.starts += 1
        trace = node.directory / f"trace-{node.starts}.mp"
        node.traces.append(trace)
        argv = [sys.executable, "-m", "hsmproxy.cli", "wrap", "--signer", str(signer),
                "--wal-dir", str(node.wal_dir), "--trace", str(trace)]
        if self.faults:
            if node.control is None:
                node.control = f"127.0.0.1:{self._utils.reserve_unused_port()}"
            argv += ["--enable-faults", "--control", node.control]
        script = node.directory / SCRIPT_NAME
        # lightningd runs `hsmd --version` before every start and compares it byte for byte: the
        # signer answers it directly, which spares a Python start on every node start.
        script.write_text("#!/bin/sh\n# written by hsmproxy's pytest plugin (--hsmproxy)\n"
                          f'[ "$*" = "--version" ] && exec {shlex.quote(str(signer))} --version\n'
                          f'exec {shlex.join(argv)} -- "$@"\n')
        script.chmod(0o755)
        self._set_hsmd(daemon, script)

    def _signer_for(self, daemon) -> Path:
        own = _own_hsmd(daemon.opts.get("subdaemon"))
        if own is not None and PROXY_DIR not in Path(own).parts:
            return Path(own)  # the test brings its own hsmd: that one goes behind the proxy
        if self.signer:
            return Path(self.signer)
        hsmd = find_hsmd(daemon.executable)
        if hsmd is None:
            raise PluginSetupError(f"--hsmproxy: no lightning_hsmd found beside {daemon.executable!r} "
                                   "(nor in ../libexec/c-lightning); give it with --hsmproxy-signer PATH")
        return hsmd

    @staticmethod
    def _set_hsmd(daemon, script: Path) -> None:
        current = daemon.opts.get("subdaemon")
        others = [v for v in ([current] if isinstance(current, str) else current or []) if not v.startswith("hsmd:")]
        daemon.opts["subdaemon"] = [*others, f"hsmd:{script}"]

    # ---- per test -------------------------------------------------------------------------

    def begin_test(self, item: pytest.Item) -> None:
        self.current_item = item
        self.nodes = {}
        self.failures = []

    def after_nodes_stopped(self, nodes) -> None:
        """Read every node's proxy while its directory still exists."""
        test = self.current_item.nodeid if self.current_item is not None else ""
        for lightning_node in nodes:
            node = self.handle(lightning_node.daemon)
            try:
                node.wait_stopped()
            except TimeoutError as exc:  # still read what it wrote; the test fails on it
                self.failures.append(str(exc))
            state = node.state()
            self.reports.append(NodeReport(test, node.name, len(state["channels"]), node.requests_seen(),
                                           state["divergences"]))
            for ev in state["divergences"]:
                if ev["kind"] in self.fail_on and ev["status"] == "confirmed":
                    self.failures.append(f"{node.name}: {ev['kind']} (confirmed) channel dbid {ev['dbid']} "
                                         f"index {ev['index']}: {ev.get('detail', '')}; trace {node.trace_path}")
        if self.failures and self.current_item is not None:
            self.current_item.has_errors = True  # pyln-testing keeps the directory: traces, WAL

    def end_test(self) -> list[str]:
        failures, self.failures, self.current_item = self.failures, [], None
        return failures


def _own_hsmd(value) -> str | None:
    for v in [value] if isinstance(value, str) else value or []:
        if v.startswith("hsmd:"):
            return v.split(":", 1)[1]
    return None
