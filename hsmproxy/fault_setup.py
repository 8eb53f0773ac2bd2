"""Fault injection and the control API as the proxy commands use them: options, hook, service.

``hsmproxy/assembly.py`` calls ``add_fault_options`` and ``build_fault_hooks``; nothing else in the
proxy needs to know about faults. Fault rules are refused unless ``--enable-faults`` (or
``enable-faults = true`` in the config file) is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path

import trio

from proxy.addons.control_api import add_fault_routes
from proxy.trio.http_server import ControlAddress, ControlAddressError, ControlServer, HTTPError, RouteTable, parse_address
from faults.engine import FaultEngine
from hsmproxy.fault_options import add_fault_options  # noqa: F401 - re-exported for the proxy's options
from proxy.addons.fault_hook import FaultHook
from faults.plan import PlanError, load_plan
from proxy.addons.fault_runtime import REFUSAL, FaultRuntime

log = logging.getLogger("hsmproxy.faults")

EXIT_BAD_OPTION = 2


def _fail(message: str) -> "SystemExit":
    print(f"hsmproxy: {message}", file=sys.stderr)
    return SystemExit(EXIT_BAD_OPTION)


def build_runtime(args: argparse.Namespace) -> FaultRuntime | None:
    """The fault state for this run, or None when no fault or control option was given."""
    enabled = bool(getattr(args, "enable_faults", False))
    plan_spec = getattr(args, "faults", None)
    if not (enabled or plan_spec or getattr(args, "control", None)):
        return None
    if plan_spec and not enabled:
        raise _fail(f"--faults {plan_spec!r}: {REFUSAL}")
    rules, plan_seed = [], None
    if plan_spec:
        try:
            plan = load_plan(plan_spec)
        except PlanError as exc:
            raise _fail(f"--faults: {exc}") from None
        rules, plan_seed = plan.rules, plan.seed
    seed = args.fault_seed if getattr(args, "fault_seed", None) is not None else plan_seed
    if seed is None:
        seed = secrets.randbelow(2**32)
    runtime = FaultRuntime(FaultEngine(rules, seed=seed), allowed=enabled)
    if enabled:
        # Loud on purpose: a proxy that may break things says so, with what reproduces the run.
        log.warning("FAULT INJECTION ENABLED: seed %d, %d rule(s)%s", seed, len(rules), f" from {plan_spec}" if plan_spec else "")
    return runtime


def build_fault_hooks(args: argparse.Namespace, earlier_hooks=()) -> tuple[list, "ControlService | None"]:
    """(hooks to add after shadow/WAL, the control service or None).

    The control service is a hook too (it starts its server when the relay starts); others
    add their routes to ``service.routes`` before the run (``/metrics``). A shadow hook among
    ``earlier_hooks`` (one with ``state_jsonable``/``divergences_jsonable``) backs ``/shadow/...``.
    """
    runtime = build_runtime(args)
    hooks: list = []
    if runtime is not None and runtime.allowed:
        hooks.append(FaultHook(runtime, node_pid=_node_pid_source(args), signer_pid=_signer_pid_source(args)))
    service = None
    if getattr(args, "control", None):
        try:
            address = parse_address(args.control)
        except ControlAddressError as exc:
            raise _fail(f"--control: {exc}") from None
        if not address.is_loopback and not (args.control_allow_remote and args.control_token):
            raise _fail(f"--control {args.control}: not a loopback address; add --control-allow-remote and --control-token TOKEN")
        service = ControlService(address, runtime, token=args.control_token, allow_remote=args.control_allow_remote)
        service.shadow = next((h for h in earlier_hooks if callable(getattr(h, "state_jsonable", None))), None)
    return hooks, service


def _node_pid_source(args):
    if args.node_pid is not None:
        return lambda: args.node_pid
    if getattr(args, "command", None) == "wrap":
        return os.getppid  # lightningd execs the wrapper script, which execs us: our parent
    return lambda: None


def _signer_pid_source(args):
    if args.signer_pid is not None:
        return lambda: args.signer_pid
    if getattr(args, "command", None) == "wrap":
        return only_child_pid
    return lambda: None


def only_child_pid() -> int | None:
    """The wrapper's one child process, the signer (Linux /proc)."""
    children: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return children[0] if len(children) == 1 else None


class ControlService:
    """Runs the control server inside the relay's trio run.

    It is a hook so the shells need no change: the first connection event starts the server as
    a trio system task (it ends with the run). ``start(nursery)`` does the same for a shell that
    wants to start it before any connection (socket mode).
    """

    def __init__(self, address: ControlAddress, runtime: FaultRuntime | None, token=None, allow_remote=False):
        self.address = address
        self.runtime = runtime
        self.routes = RouteTable()
        self.token = token
        self.allow_remote = allow_remote
        self.bound: ControlAddress | None = None
        self.health_extra: list = []  # callables returning dicts merged into /health
        self.shadow = None  # the shadow hook, when the proxy keeps a shadow state
        self._started = False
        if runtime is not None:  # None: a bare server for other routes (e.g. --metrics alone)
            add_fault_routes(
                self.routes,
                runtime,
                shadow_state=lambda: self._shadow().state_jsonable(),
                shadow_divergences=lambda: {"divergences": self._shadow().divergences_jsonable()},
                health_extra=self._health_extra,
            )

    def _shadow(self):
        if self.shadow is None:
            raise HTTPError(404, "no shadow state here: this proxy runs without it (--no-parse)")
        return self.shadow

    def _health_extra(self) -> dict:
        out: dict = {}
        for provide in self.health_extra:
            out.update(provide())
        return out

    async def start(self, nursery: trio.Nursery | None = None) -> None:
        if self._started:
            return
        self._started = True
        server = ControlServer(self.routes, token=self.token)
        if nursery is not None:
            self.bound = await nursery.start(server.serve, self.address, self.allow_remote)
            log.warning("control API on %s", self.bound)
            return
        ready = trio.Event()

        async def serve_forever():
            # A system task must not raise: a control server that cannot bind is logged, and the
            # relay goes on (the node must never break because of our tooling).
            try:
                async with trio.open_nursery() as n:
                    self.bound = await n.start(server.serve, self.address, self.allow_remote)
                    log.warning("control API on %s", self.bound)
                    ready.set()
            except Exception as exc:  # noqa: BLE001 - see above (OSError arrives inside an ExceptionGroup)
                errors = exc.exceptions if isinstance(exc, ExceptionGroup) else [exc]
                log.error("control API on %s stopped or never started: %s", self.address, "; ".join(map(str, errors)))
            finally:
                ready.set()

        trio.lowlevel.spawn_system_task(serve_forever, name="hsmproxy control API")
        await ready.wait()

    async def on_connection(self, conn, event: str) -> None:
        if not self._started:
            await self.start()
