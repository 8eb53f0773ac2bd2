"""The hooks of one `wrap` or `serve` run, built from its parsed options (``hsmproxy.options``).

This is the one place that checks what the options mean together (``--faults`` needs
``--enable-faults``, ``--guard`` needs the parser, a remote ``--control`` needs a token, which
comes from the command line, a private file or the environment: ``hsmproxy.control_token``) and
wires the hooks to each other (the trace hears of divergences and injected faults, the control
API serves the shadow state and ``/metrics``). The shells never import hooks.

Engineers adding a hook: add your flags in ``hsmproxy.options`` and your hook in ``build_hooks``,
in the documented order.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys

from faults.engine import FaultEngine
from faults.plan import PlanError, load_plan
from hsmproxy.control_token import ENV_VAR as CONTROL_TOKEN_ENV, TokenError, resolve_token
from proxy.addons.control_api import ControlApi, HttpServerHook
from proxy.addons.fault_hook import FaultHook
from proxy.addons.fault_runtime import REFUSAL, FaultRuntime
from proxy.addons.metrics import Metrics
from proxy.addons.metrics_hook import MetricsHook, add_metrics_route
from proxy.addons.shadow_hook import ShadowHook
from proxy.addons.trace import TraceHook
from proxy.core.hooks import HookChain
from proxy.core.relay import DEFAULT_LIMITS, MAX_UNANSWERED, Limits
from proxy.trio.addresses import Address, AddressError, parse_address
from proxy.trio.children import only_child_pid
from proxy.core.wal_format import NO_SNAPSHOT, Damage, WalDamaged, WalError

log = logging.getLogger("hsmproxy.faults")

EXIT_BAD_OPTION = 2


def build_hooks(args: argparse.Namespace) -> HookChain:
    """The hooks for this run, in order: shadow/WAL first, then faults, the control API, metrics,
    and the trace last (so it records the verdict the others decided)."""
    metrics = _metrics(args)
    shadow = _shadow_hook(args, metrics)
    runtime = build_runtime(args)
    control = _control_api(args, runtime, shadow)
    hooks: list = []
    if shadow is not None:
        hooks.append(shadow)
    if runtime is not None and runtime.allowed:
        hooks.append(FaultHook(runtime, node_pid=_node_pid_source(args), signer_pid=_signer_pid_source(args)))
    if control is not None:
        hooks.append(control)
    if metrics is not None:
        hooks += _metrics_hooks(args, metrics, runtime, control)
    if getattr(args, "trace", None):
        trace = TraceHook(args.trace, secrets=args.trace_secrets, parsed=getattr(args, "parse", True))
        hooks.append(trace)
        if shadow is not None:  # divergence events and injected faults go into the trace too
            shadow.listeners.append(trace.divergence)
        if runtime is not None:
            runtime.listeners.append(trace.fault)
    return HookChain(hooks)


def relay_limits(args: argparse.Namespace) -> Limits:
    """The relay's memory bounds for this run (``--max-unanswered``)."""
    max_unanswered = getattr(args, "max_unanswered", None)
    if max_unanswered is None:
        return DEFAULT_LIMITS
    if max_unanswered < 1:
        raise _fail(f"--max-unanswered {max_unanswered}: give at least 1 (lightningd itself waits for "
                    f"each answer; the default is {MAX_UNANSWERED})")
    return Limits(max_unanswered=max_unanswered)


def close_hooks(chain: HookChain) -> None:
    for hook in chain.hooks:
        close = getattr(hook, "close", None)
        if callable(close):
            close()


def _fail(message: str) -> SystemExit:
    print(f"hsmproxy: {message}", file=sys.stderr)
    return SystemExit(EXIT_BAD_OPTION)


def _shadow_hook(args: argparse.Namespace, metrics: Metrics | None) -> ShadowHook | None:
    if not getattr(args, "parse", True):
        given = [flag for flag, on in (("--guard", getattr(args, "guard", False)),
                                       ("--wal-dir", getattr(args, "wal_dir", None))) if on]
        if given:
            raise _fail(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} the parser; drop --no-parse")
        return None
    wal_dir, repair = getattr(args, "wal_dir", None), getattr(args, "wal_repair", False)
    if repair and not wal_dir:
        raise _fail("--wal-repair needs --wal-dir DIR (the WAL to repair)")
    try:
        return ShadowHook.open(wal_dir, guard=getattr(args, "guard", False), metrics=metrics, set_aside_damage=repair)
    except WalDamaged as exc:
        raise _fail(f"--wal-dir {wal_dir}: {exc}. {wal_damage_advice(wal_dir, exc.damage)}") from None
    except (WalError, OSError) as exc:
        raise _fail(f"--wal-dir {wal_dir}: {exc}") from None


def wal_damage_advice(wal_dir: str, damage: list[Damage]) -> str:
    """What to do about a damaged WAL (the proxy refuses to start with a shadow that misses records)."""
    keeps = "; ".join(f"{d.file}: the {d.index} record(s) before the damage" if d.kind != NO_SNAPSHOT
                      else f"{d.file}: none" for d in damage)
    return (f"The proxy does not start with a shadow that would miss them. Inspect it with "
            f"`hsmproxy state --wal-dir {wal_dir}`; to start anyway, add --wal-repair: it moves each damaged "
            f"log aside to NAME.damaged-TIME (kept, never deleted) and continues from what can be replayed "
            f"({keeps})")


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


def _control_api(args: argparse.Namespace, runtime: FaultRuntime | None, shadow: ShadowHook | None) -> ControlApi | None:
    try:
        token = resolve_token(getattr(args, "control_token", None), getattr(args, "control_token_file", None))
    except TokenError as exc:
        raise _fail(str(exc)) from None
    # The token is the proxy's: the signer that `wrap` starts next must not inherit it.
    os.environ.pop(CONTROL_TOKEN_ENV, None)
    if not getattr(args, "control", None):
        return None
    address = _address("--control", args.control)
    if not address.is_loopback and not (args.control_allow_remote and token):
        raise _fail(f"--control {args.control}: not a loopback address; add --control-allow-remote and a token "
                    f"(--control-token-file FILE or ${CONTROL_TOKEN_ENV})")
    return ControlApi(address, runtime, shadow=shadow, token=token, allow_remote=args.control_allow_remote)


def _metrics(args: argparse.Namespace) -> Metrics | None:
    """A metrics registry when something will serve it (--metrics, or the control API)."""
    if not (getattr(args, "metrics", None) or getattr(args, "control", None)):
        return None
    return Metrics(channel_detail=getattr(args, "channel_detail", 0) or 0)


def _metrics_hooks(args: argparse.Namespace, metrics: Metrics, runtime: FaultRuntime | None,
                   control: ControlApi | None) -> list:
    """The metrics hook, and a server for /metrics unless the control API already serves it."""
    if runtime is not None:
        runtime.attach_metrics(metrics)
    out = []
    if control is not None:
        add_metrics_route(control.routes, metrics)
    if args.metrics and (control is None or args.metrics != args.control):
        address = _address("--metrics", args.metrics)
        if not address.is_loopback:
            raise _fail(f"--metrics {args.metrics}: serve metrics on a loopback address "
                        "(or put --control-allow-remote and a token on --control)")
        server = HttpServerHook(address, "Prometheus metrics (GET /metrics only)")
        add_metrics_route(server.routes, metrics)
        out.append(server)
    out.append(MetricsHook(metrics))  # last but the trace: its timings include the WAL and faults
    return out


def _address(option: str, text: str) -> Address:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise _fail(f"{option}: {exc}") from None


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
