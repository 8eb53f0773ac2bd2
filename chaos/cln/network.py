"""The real network of a sweep: one bitcoind on regtest, two lightningd nodes started through
pyln-testing, each node's hsmd behind ``hsmproxy wrap`` (a WAL, one trace per start, faults
enabled, a control API), and one channel between them.

Users bring their own binaries; nothing here builds or copies them. pyln-testing is imported
when a network is built (``pip install 'hsmproxy[cln]'``), so ``hsmproxy chaos`` without
``--lightningd`` never needs it.

Only the crashed node restarts: bitcoind, the other node and the channel serve the whole sweep.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from chaos.cln.judge import ABSENT, COMPLETE, FAILED, FULFIL, PENDING, ChannelView, Payment
from chaos.cln.points import NODES
from chaos.runner import hsmproxy_argv
from proxy.trio.children import live_processes
from proxy.trio.shadow_recovery import wal_view
from proxy.addons.trace import TraceFormatError, read_trace

FUNDING_SAT = 1_000_000  # pyln-testing's FUNDAMOUNT
PYLN_HINT = "pip install 'hsmproxy[cln]' (it pulls pyln-testing)"
# Plugins that neither move channel state nor reach bitcoind: left out of the nodes by default,
# because every restart starts every plugin (``--all-plugins`` keeps them).
UNNEEDED_PLUGINS = ("autoclean", "bookkeeper", "cln-askrene", "cln-renepay", "cln-xpay", "commando",
                    "exposesecret", "keysend", "offers", "pay", "recklessrpc", "recover", "sql", "topology")


class SweepSetupError(Exception):
    """The sweep cannot start: the message names what is missing and how to get it."""


class NodeStartError(Exception):
    """A lightningd did not start (again)."""


# ---- binaries ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Binaries:
    lightningd: Path
    bitcoind: Path
    bitcoin_cli: Path
    signer: Path  # the hsmd behind the proxy (lightning_hsmd, or --signer)


def _executable(given: str | None, env: str, name: str, what: str, environ) -> Path:
    if given:
        path = shutil.which(given) if os.sep not in given else given
        if path is None or not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise SweepSetupError(f"{name} {given!r} is not an executable file; give the path of {what}")
        return Path(path).resolve()
    from_env = environ.get(env)
    if from_env:
        if not (os.path.isfile(from_env) and os.access(from_env, os.X_OK)):
            raise SweepSetupError(f"${env}={from_env!r} is not an executable file; give the path of {what}")
        return Path(from_env).resolve()
    found = shutil.which(name, path=environ.get("PATH"))
    if found is None:
        raise SweepSetupError(f"{name} not found: give --{name} PATH, set ${env}, or put it on PATH ({what})")
    return Path(found).resolve()


def find_hsmd(lightningd: Path) -> Path | None:
    """The lightning_hsmd this lightningd starts: beside it in a build tree, or under
    ../libexec/c-lightning when installed."""
    here = lightningd.resolve().parent
    for candidate in (here / "lightning_hsmd", here.parent / "libexec" / "c-lightning" / "lightning_hsmd"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_binaries(lightningd: str | None = None, bitcoind: str | None = None, signer: str | None = None,
                  environ=None) -> Binaries:
    """Resolve the binaries from the options, then ``$LIGHTNINGD`` / ``$BITCOIND``, then PATH."""
    environ = os.environ if environ is None else environ
    ld = _executable(lightningd, "LIGHTNINGD", "lightningd", "Core Lightning's lightningd, v26.06 or newer", environ)
    bd = _executable(bitcoind, "BITCOIND", "bitcoind", "Bitcoin Core's bitcoind, 25 or newer", environ)
    cli = bd.parent / "bitcoin-cli"
    if not (cli.is_file() and os.access(cli, os.X_OK)):
        found = shutil.which("bitcoin-cli", path=environ.get("PATH"))
        if found is None:
            raise SweepSetupError(f"bitcoin-cli not found beside {bd} nor on PATH: lightningd's bcli plugin needs it")
        cli = Path(found).resolve()
    if signer:
        if not (os.path.isfile(signer) and os.access(signer, os.X_OK)):
            raise SweepSetupError(f"--signer {signer!r} is not an executable file; give the path of lightning_hsmd "
                                  "or another hsmd-compatible signer")
        hsmd = Path(signer).resolve()
    else:
        hsmd = find_hsmd(ld)
        if hsmd is None:
            raise SweepSetupError(f"no lightning_hsmd beside {ld} (nor in ../libexec/c-lightning); give it with --signer PATH")
    return Binaries(ld, bd, cli, hsmd)


def load_pyln():
    """pyln-testing's utils and db modules, imported with the environment they read at import."""
    os.environ["TEST_NETWORK"] = "regtest"
    os.environ.setdefault("RUST", "0")  # no cln-grpc: pyln must not give nodes a grpc port
    try:
        from pyln.testing import db, utils
    except ImportError as exc:
        raise SweepSetupError(f"the sweep drives real nodes through pyln-testing, which is not installed ({exc}); "
                              f"{PYLN_HINT}") from None
    return utils, db


# ---- processes --------------------------------------------------------------------------------

def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), to tell it from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    if fields[0] == b"Z":
        return None  # a zombie is gone for our purposes
    return int(fields[19])


def children_of(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of ``pid``'s children."""
    return [(child, int(fields[19])) for child, fields in live_processes() if int(fields[1]) == pid]


def alive(proc: tuple[int, int]) -> bool:
    return _start_time(proc[0]) == proc[1]


def wait_gone(procs: list[tuple[int, int]], timeout: float) -> list[tuple[int, int]]:
    """Wait until none of ``procs`` runs; returns those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if alive(p)]
    return left


def kill_all(procs: list[tuple[int, int]]) -> None:
    """SIGKILL processes this sweep started (checked against their start time first)."""
    for pid, started in procs:
        if _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- one node ---------------------------------------------------------------------------------

class SweepNode:
    """One pyln-testing node whose hsmd runs behind ``hsmproxy wrap``, started any number of times.

    Its proxy's files are in ``<lightning-dir>/hsmproxy/``, as the pytest plugin lays them out:
    ``wal/``, ``trace-N.mp`` (one per start), ``hsmd-wrapper.sh``, ``proxy.pid``.
    """

    def __init__(self, name: str, pyln_node, signer: Path, *, proxied: bool = True, use_flock: bool = True):
        self.name = name
        self.pyln = pyln_node
        self.signer = signer
        self.proxied = proxied
        self.use_flock = use_flock
        self.directory = Path(pyln_node.daemon.lightning_dir) / "hsmproxy"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.starts = 0
        self.traces: list[Path] = []
        self.incarnation: list[tuple[int, int]] = []  # lightningd's children, read when it was last up
        self.leftovers: list[tuple[int, int]] = []  # processes of killed starts, ended at teardown
        self.control_address = ""  # the running proxy's control API (a loopback port per start)

    @property
    def rpc(self):
        return self.pyln.rpc

    @property
    def wal_dir(self) -> Path:
        return self.directory / "wal"

    @property
    def trace_path(self) -> Path | None:
        return self.traces[-1] if self.traces else None

    @property
    def log_path(self) -> Path:
        return Path(self.pyln.daemon.lightning_dir) / "log"

    @property
    def node_id(self) -> str:
        return self.pyln.info["id"]

    @property
    def pid(self) -> int | None:
        proc = self.pyln.daemon.proc
        return proc.pid if proc is not None else None

    def is_up(self) -> bool:
        proc = self.pyln.daemon.proc
        return proc is not None and proc.poll() is None

    def proxy_process(self) -> tuple[int, int] | None:
        try:
            pid = int((self.directory / "proxy.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        started = _start_time(pid)
        return (pid, started) if started is not None else None

    def _write_wrapper(self, control_port: int) -> Path:
        self.starts += 1
        # A loopback port rather than a Unix socket: a socket path under a deep --workdir can
        # outgrow sun_path, and a new port per start never meets the previous proxy's.
        self.control_address = f"127.0.0.1:{control_port}"
        trace = self.directory / f"trace-{self.starts}.mp"
        self.traces.append(trace)
        argv = [*hsmproxy_argv(), "wrap", "--signer", str(self.signer), "--wal-dir", str(self.wal_dir),
                "--trace", str(trace), "--enable-faults", "--control", self.control_address, "--"]
        lines = ["#!/bin/sh", f"# hsmproxy chaos sweep: {self.name}'s hsmd, start {self.starts}",
                 # The nodes run with --dev-no-version-checks; should one ask, the signer answers.
                 f'[ "$*" = "--version" ] && exec {shlex.quote(str(self.signer))} --version',
                 f"echo $$ > {shlex.quote(str(self.directory / 'proxy.pid'))}"]
        if self.use_flock:
            # The previous start's proxy may still be writing the WAL after lightningd died; this
            # start's proxy waits for it here, while lightningd goes on starting its plugins.
            lines += [f"exec 9>>{shlex.quote(str(self.directory / 'wal.lock'))}", "flock 9",
                      f": > {shlex.quote(str(self.directory / 'wal.locked'))}  # its mtime: when the wait ended"]
        lines.append(f'exec {shlex.join(argv)} "$@"')
        script = self.directory / "hsmd-wrapper.sh"
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o700)
        return script

    def prepare_start(self, control_port: int = 0) -> None:
        if self.proxied:
            self.pyln.daemon.opts["subdaemon"] = f"hsmd:{self._write_wrapper(control_port)}"
        else:
            self.pyln.daemon.opts["subdaemon"] = f"hsmd:{self.signer}"

    def start(self, control_port: int, timeout: float = 60.0) -> None:
        """Start lightningd and wait until it serves RPC and is synced with bitcoind (what pyln's
        ``LightningNode.start`` does, polling every 20 ms instead of every 250 ms)."""
        self.prepare_start(control_port)
        daemon = self.pyln.daemon
        try:
            daemon.start(wait_for_initialized=False, stderr_redir=True)
            self._wait_for_log("Server started with public key", timeout)
            self.pyln.info = self.rpc.getinfo()
            self.pyln.port = self.pyln.info["binding"][0]["port"]
            if not poll(lambda: self.pyln.is_synced_with_bitcoin(), timeout):
                raise NodeStartError(f"lightningd {self.name} is not synced with bitcoind after {timeout:.0f} s")
        except NodeStartError:
            raise
        except Exception as exc:  # pyln-client raises RpcError, OSError, ...
            raise NodeStartError(f"lightningd {self.name} did not start: {exc}; see {self.log_path}") from exc
        self.note_incarnation()

    def _wait_for_log(self, pattern: str, timeout: float) -> None:
        daemon = self.pyln.daemon
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            daemon.logs_catchup()
            while daemon.logsearch_start < len(daemon.logs):
                line = daemon.logs[daemon.logsearch_start]
                daemon.logsearch_start += 1
                if regex.search(line):
                    return
            if daemon.proc.poll() is not None:
                raise NodeStartError(f"lightningd {self.name} exited with status {daemon.proc.returncode} while "
                                     f"starting; see {self.log_path} and {self.log_path.parent / 'errlog'}")
            if time.monotonic() > deadline:
                raise NodeStartError(f"lightningd {self.name} did not start within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.02)

    def start_timings(self) -> dict[str, float]:
        """Where the last start's proxy spent its time: waiting for the previous proxy to let go
        of the WAL (flock), and starting (interpreter, imports, WAL recovery, hooks) until its
        first connection opened). From the times the wrapper script and the trace leave."""
        out: dict[str, float] = {}
        try:
            began = (self.directory / "proxy.pid").stat().st_mtime
            locked = (self.directory / "wal.locked").stat().st_mtime if self.use_flock else began
            with closing(read_trace(str(self.trace_path))) as records:
                next(records)  # the header
                relaying = next(records)["t"]  # the master connection opened: the proxy relays
        except (OSError, StopIteration, TraceFormatError, TypeError, KeyError):
            return out
        out["proxy_lock_wait"] = max(0.0, locked - began)
        out["proxy_start"] = max(0.0, relaying / 1e9 - locked)
        return out

    def note_incarnation(self) -> None:
        """Remember lightningd's children (subdaemons, plugins, the proxy) while it is up: once it
        is killed they are orphans, and the next start must not race them for ports and files."""
        if self.pid is not None:
            self.incarnation = children_of(self.pid)

    def wait_dead(self, timeout: float) -> None:
        try:
            self.pyln.daemon.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass  # judged from what follows: the restart fails on a live lightningd's pid file

    def wait_incarnation_gone(self, timeout: float) -> None:
        """Wait for the killed start's processes, except its proxy when the next proxy waits for
        it itself (flock): that one only matters to the WAL, and exits on its own."""
        proxy = self.proxy_process() if self.use_flock else None
        waiting = [p for p in self.incarnation if p != proxy]
        self.leftovers += wait_gone(waiting, timeout)
        if proxy is not None:
            self.leftovers.append(proxy)
        self.incarnation = []

    def kill(self) -> None:
        """SIGKILL lightningd (the baseline without a proxy kills it from here)."""
        if self.pid is not None and self.is_up():
            os.kill(self.pid, signal.SIGKILL)

    # ---- what the proxy saw ----

    def shadow(self) -> dict:
        """What `hsmproxy state --json` shows, read from the WAL (live or dead proxy)."""
        return wal_view(str(self.wal_dir))


# ---- the network ------------------------------------------------------------------------------

class Network:
    """bitcoind, l1 and l2, and one channel from l1 to l2."""

    def __init__(self, root: Path, binaries: Binaries, *, proxied: bool = True, all_plugins: bool = False,
                 timeout: float = 30.0):
        self.root = root
        self.binaries = binaries
        self.proxied = proxied
        self.all_plugins = all_plugins
        self.timeout = timeout
        self.utils, self.db = load_pyln()
        self.bitcoind = None
        self.factory = None
        self.db_provider = None
        self.executor = None
        self.nodes: dict[str, SweepNode] = {}
        self.channel_id: str | None = None
        self.scid: str | None = None
        self.dbid: dict[str, int] = {}
        self.use_flock = shutil.which("flock") is not None
        self._labels = 0
        self.funding_msat = FUNDING_SAT * 1000

    # ---- start and stop ----

    def _environment(self) -> None:
        """pyln-testing starts `bitcoind` and `lightningd` by name and copies os.environ into each."""
        dirs = [str(self.binaries.lightningd.parent), str(self.binaries.bitcoind.parent)]
        os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])

    def start(self) -> None:
        self._environment()
        self.root.mkdir(parents=True, exist_ok=True)
        utils = self.utils
        self.bitcoind = utils.BitcoinD(bitcoin_dir=str(self.root / "bitcoind"))
        self.bitcoind.cmd_line[0] = str(self.binaries.bitcoind)
        self.bitcoind.start()
        self.bitcoind.generate_block(101)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hsmproxy-sweep")
        self.db_provider = self.db.SqliteDbProvider(str(self.root))
        self.db_provider.start()
        self.factory = utils.NodeFactory(None, "hsmproxy-sweep", self.bitcoind, self.executor, str(self.root),
                                         self.db_provider, utils.LightningNode, {})
        options = {"start": False, "may_fail": True, "may_reconnect": True,
                   "bitcoin-cli": str(self.binaries.bitcoin_cli), "dev-no-version-checks": None}
        if not self.all_plugins:
            options["disable-plugin"] = list(UNNEEDED_PLUGINS)
        pyln_nodes = self.factory.get_nodes(2, opts=[dict(options), dict(options)])
        for name, pyln_node in zip(NODES, pyln_nodes):
            pyln_node.daemon.executable = str(self.binaries.lightningd)
            # Log to the file only: lightningd's default second log (stdout) would be our console.
            pyln_node.daemon.opts["log-file"] = str(Path(pyln_node.daemon.lightning_dir) / "log")
            pyln_node.daemon.opts["log-level"] = "debug"  # trace doubles the log; the proxy's trace has every hsmd message
            self.nodes[name] = SweepNode(name, pyln_node, self.binaries.signer, proxied=self.proxied,
                                         use_flock=self.use_flock)
        try:
            for running in [self.executor.submit(node.start, self.port(), self.timeout * 2)
                            for node in self.nodes.values()]:
                running.result()
        except NodeStartError as exc:
            raise SweepSetupError(str(exc)) from None
        self.factory.join_nodes([n.pyln for n in self.nodes.values()], fundamount=FUNDING_SAT)
        l1, l2 = self.nodes["l1"], self.nodes["l2"]
        channel = l1.rpc.listpeerchannels(l2.node_id)["channels"][0]
        self.channel_id, self.scid = channel["channel_id"], channel["short_channel_id"]

    def find_dbids(self) -> None:
        """Each node's database id of the channel, as its proxy's shadow knows it (the fault rules
        match on it). Needs a payment first: channeld's hsmd connection carries the dbid."""
        for name, node in self.nodes.items():
            peer = self.peer_of(name)
            for channel in node.shadow()["channels"]:
                if channel["peer_id"] == peer.node_id:
                    self.dbid[name] = channel["dbid"]
            if name not in self.dbid:
                raise SweepSetupError(f"{name}'s proxy has no channel with {peer.name} in its WAL ({node.wal_dir})")

    def stop(self) -> None:
        """Stop everything this network started; never raises."""
        for node in self.nodes.values():
            try:
                if node.is_up():
                    node.note_incarnation()
                    node.pyln.stop(timeout=10)
            except Exception:
                node.kill()
        for node in self.nodes.values():
            left = wait_gone(node.incarnation + node.leftovers, 10.0)
            kill_all(left)
            node.leftovers = []
        if self.bitcoind is not None:
            try:
                self.bitcoind.stop()
            except Exception:
                if self.bitcoind.proc is not None:
                    self.bitcoind.proc.kill()
        if self.db_provider is not None:
            self.db_provider.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False)

    def port(self) -> int:
        """A free loopback port (pyln-testing's reservation, so parallel test runs do not collide)."""
        return self.utils.reserve_unused_port()

    # ---- the channel ----

    def peer_of(self, name: str) -> SweepNode:
        return self.nodes["l2" if name == "l1" else "l1"]

    def channel_view(self, name: str) -> ChannelView | None:
        node, peer = self.nodes[name], self.peer_of(name)
        for ch in node.rpc.listpeerchannels(peer.node_id)["channels"]:
            if ch.get("channel_id") == self.channel_id:
                htlcs = [{"direction": h.get("direction"), "amount_msat": int(h.get("amount_msat", 0)),
                          "state": h.get("state")} for h in ch.get("htlcs", [])]
                return ChannelView(name, ch["state"], bool(ch.get("peer_connected")), int(ch["to_us_msat"]),
                                   int(ch["total_msat"]), htlcs)
        return None

    def connect(self, name: str) -> None:
        node, peer = self.nodes[name], self.peer_of(name)
        node.rpc.connect(peer.node_id, "127.0.0.1", peer.pyln.port)

    def wait_normal(self, timeout: float) -> bool:
        """Both sides in CHANNELD_NORMAL and connected."""
        def normal(view):
            return view is not None and view.state == "CHANNELD_NORMAL" and view.connected
        return poll(lambda: all(normal(self.channel_view(n)) for n in self.nodes), timeout)

    def wait_settled(self, timeout: float) -> bool:
        """No HTLC in flight on either side."""
        def settled(view):
            return view is not None and not view.htlcs
        return poll(lambda: all(settled(self.channel_view(n)) for n in self.nodes), timeout)

    # ---- payments ----

    def start_payment(self, payer: str, amount_msat: int, kind: str, phase: str) -> Payment:
        """An HTLC from ``payer`` to its peer over the channel: to an invoice of the peer
        (``fulfil``), or to a hash nobody knows, which the peer fails (``fail``)."""
        src, dst = self.nodes[payer], self.peer_of(payer)
        self._labels += 1
        label = f"sweep-{self._labels}-{secrets.token_hex(4)}"
        secret, delay = None, 18
        if kind == FULFIL:
            invoice = dst.rpc.invoice(amount_msat, label, "hsmproxy chaos sweep")
            payment_hash, secret = invoice["payment_hash"], invoice["payment_secret"]
        else:
            payment_hash = secrets.token_hex(32)
        payment = Payment(payer, dst.name, amount_msat, kind, phase, payment_hash,
                          label=label if kind == FULFIL else None)
        route = [{"amount_msat": amount_msat, "id": dst.node_id, "delay": delay, "channel": self.scid}]
        try:
            src.rpc.sendpay(route, payment_hash, payment_secret=secret)
        except Exception as exc:  # the payer may die in the middle of it: that is the point
            payment.error = _short(exc)
        return payment

    def wait_payment(self, payment: Payment, timeout: float, stop=lambda: False) -> None:
        """Until the payment is resolved, ``stop()`` is true (a node died), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop():
            self.refresh(payment)
            if payment.status in (COMPLETE, FAILED):
                return
            time.sleep(0.02)

    def refresh(self, payment: Payment) -> None:
        """The payer's record of it (and the payee's invoice). A node that is down leaves it as is."""
        payer, payee = self.nodes[payment.payer], self.nodes[payment.payee]
        try:
            parts = payer.rpc.listsendpays(payment_hash=payment.payment_hash)["payments"]
        except Exception:
            return
        statuses = {p["status"] for p in parts}
        if not parts:
            payment.status = ABSENT
        elif COMPLETE in statuses:
            payment.status = COMPLETE
        elif PENDING in statuses:
            payment.status = PENDING
        else:
            payment.status = FAILED
        if payment.label:
            try:
                invoices = payee.rpc.listinvoices(payment.label)["invoices"]
            except Exception:
                return
            payment.invoice_status = invoices[0]["status"] if invoices else None


def poll(condition, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return True
        except Exception:
            pass  # a node restarting: its RPC socket comes and goes
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
