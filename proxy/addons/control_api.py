"""The control API: its routes (faults, health, the shadow-state read-outs) and the hook that
serves them next to the relay.

``HttpServerHook`` runs an ``HttpServer`` for as long as the relay runs; ``ControlApi`` is that
hook with the routes below. ``--metrics`` alone uses a bare ``HttpServerHook`` with ``/metrics``.

| method | path | does |
|---|---|---|
| GET | /health | liveness, whether faults are enabled, seed, trace hash, counts |
| GET | /faults/rules | the rules |
| POST | /faults/rules | add rules: {"line": "<one-line plan>"} or {"rule": {...}} or {"rules": [{...}]} |
| DELETE | /faults/rules/{name} | remove one rule |
| DELETE | /faults/rules | remove every rule |
| POST | /faults/enable, /faults/disable | switch all rules on or off (they stay installed) |
| GET | /faults/held | messages held by a hold rule |
| POST | /faults/release | {"id": N} releases one, {} releases all |
| GET | /faults/events?limit=N | the latest injected faults |
| GET | /faults/trace | seed, fault count, fault-trace hash |
| GET | /shadow/state, /shadow/divergences | the shadow engineer's read-outs, when a provider is plugged in |
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from faults.plan import PlanError, parse_one_line, rule_from_mapping
from proxy.addons.fault_runtime import REFUSAL, FaultRuntime, FaultsNotEnabled
from proxy.trio.addresses import Address, AddressError
from proxy.trio.http_server import HTTPError, HttpServer, Request, Response, RouteTable

log = logging.getLogger("hsmproxy.control")


def add_fault_routes(
    routes: RouteTable,
    runtime: FaultRuntime,
    shadow_state: Callable[[], dict] | None = None,
    shadow_divergences: Callable[[], list] | None = None,
    health_extra: Callable[[], dict] | None = None,
) -> None:
    engine = runtime.engine

    async def health(request: Request) -> Response:
        body = {"ok": True, **runtime.health()}
        if health_extra is not None:
            body.update(health_extra())
        return Response.json(body)

    async def list_rules(request: Request) -> Response:
        return Response.json({"enabled": engine.enabled, "rules": [r.to_json() for r in engine.rules]})

    async def add_rules(request: Request) -> Response:
        if not runtime.allowed:  # say so first: fixing the rule would not help
            raise HTTPError(403, REFUSAL)
        data = request.json()
        if not isinstance(data, dict):
            raise HTTPError(400, 'send a JSON object: {"line": "..."} or {"rule": {...}} or {"rules": [...]}')
        try:
            if "line" in data:
                rules = parse_one_line(str(data["line"]), first_index=_next_index(engine))
            elif "rule" in data or "rules" in data:
                items = data.get("rules") or [data.get("rule")]
                if not all(isinstance(i, dict) for i in items):
                    raise HTTPError(400, "each rule must be a JSON object of plan keys (action, message, point, ...)")
                first = _next_index(engine)
                rules = [rule_from_mapping(item, f"rule{first + i}") for i, item in enumerate(items)]
            else:
                raise HTTPError(400, 'send {"line": "<one-line plan>"} or {"rule": {...}} or {"rules": [...]}')
            names = [r.name for r in rules]
            installed = {r.name for r in engine.rules}
            for name in names:
                if name in installed:
                    raise PlanError(f"a rule named {name!r} exists already; remove it first or pick another name")
                if names.count(name) > 1:
                    raise PlanError(f"two of the new rules are named {name!r}; give each a unique name")
            for rule in rules:  # all-or-nothing: validated above, so these cannot fail half way
                runtime.add_rule(rule)
        except FaultsNotEnabled as exc:
            raise HTTPError(403, str(exc)) from None
        except PlanError as exc:
            raise HTTPError(400, str(exc)) from None
        return Response.json({"added": [r.to_json() for r in rules]}, 201)

    async def remove_rule(request: Request) -> Response:
        try:
            rule = engine.remove_rule(request.params["name"])
        except KeyError as exc:
            raise HTTPError(404, exc.args[0]) from None
        return Response.json({"removed": rule.name})

    async def clear_rules(request: Request) -> Response:
        return Response.json({"removed": engine.clear()})

    async def enable(request: Request) -> Response:
        engine.enabled = True
        return Response.json({"enabled": True})

    async def disable(request: Request) -> Response:
        engine.enabled = False
        return Response.json({"enabled": False})

    async def held(request: Request) -> Response:
        return Response.json({"held": [h.to_json() for h in runtime.held.values()]})

    async def release(request: Request) -> Response:
        data = request.json()
        hold_id = data.get("id") if isinstance(data, dict) else None
        if hold_id is not None and (isinstance(hold_id, bool) or not isinstance(hold_id, int)):
            raise HTTPError(400, "id must be the number of a held message (see GET /faults/held)")
        try:
            released = runtime.release(hold_id)
        except KeyError as exc:
            raise HTTPError(404, exc.args[0]) from None
        return Response.json({"released": released})

    async def events(request: Request) -> Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise HTTPError(400, "limit must be a whole number") from None
        latest = engine.events[-limit:] if limit > 0 else []
        return Response.json({"total": engine.event_count, "events": [e.to_json() for e in latest]})

    async def trace(request: Request) -> Response:
        return Response.json({"seed": engine.seed, "events": engine.event_count, "trace_hash": engine.trace_hash})

    def _shadow(provider, what):
        async def handler(request: Request) -> Response:
            if provider is None:
                raise HTTPError(404, f"no {what} here: this proxy runs without the shadow state")
            return Response.json(provider())

        return handler

    routes.add("GET", "/health", health, "liveness, fault status, seed and trace hash")
    routes.add("GET", "/faults/rules", list_rules, "list fault rules")
    routes.add("POST", "/faults/rules", add_rules, 'add rules: {"line": ...} | {"rule": {...}} | {"rules": [...]}')
    routes.add("DELETE", "/faults/rules", clear_rules, "remove every rule")
    routes.add("DELETE", "/faults/rules/{name}", remove_rule, "remove one rule")
    routes.add("POST", "/faults/enable", enable, "switch rules on")
    routes.add("POST", "/faults/disable", disable, "switch rules off (they stay installed)")
    routes.add("GET", "/faults/held", held, "messages held by hold rules")
    routes.add("POST", "/faults/release", release, 'release {"id": N} or all held messages')
    routes.add("GET", "/faults/events", events, "latest injected faults (?limit=N)")
    routes.add("GET", "/faults/trace", trace, "seed and fault-trace hash")
    routes.add("GET", "/shadow/state", _shadow(shadow_state, "shadow state"), "shadow channel state")
    routes.add("GET", "/shadow/divergences", _shadow(shadow_divergences, "divergence events"), "divergence events")


def _next_index(engine) -> int:
    """One past the highest ruleN name in use, so new default names never collide."""
    numbers = [int(r.name[4:]) for r in engine.rules if r.name.startswith("rule") and r.name[4:].isdigit()]
    return max(numbers, default=0) + 1


class HttpServerHook:
    """Runs an :class:`HttpServer` of ``routes`` inside the relay's trio run.

    It is a hook so the shells need no change: socket mode calls ``start(nursery)`` before the
    first connection (an address that cannot be used raises :class:`AddressError`, a start-up
    error); in wrapper mode the first connection event starts it as a trio system task, and a
    failure is logged while the relay goes on (the node must never break because of our tooling).
    ``serves`` says what, in the log line that gives the address.
    """

    def __init__(self, address: Address, serves: str, *, token: str | None = None, allow_remote: bool = False):
        self.address = address
        self.serves = serves
        self.routes = RouteTable()
        self.token = token
        self.allow_remote = allow_remote
        self.bound: Address | None = None
        self._started = False

    async def start(self, nursery: trio.Nursery | None = None) -> None:
        if self._started:
            return
        self._started = True
        server = HttpServer(self.routes, token=self.token)
        if nursery is not None:
            try:
                self.bound = await nursery.start(server.serve, self.address, self.allow_remote)
            except AddressError as exc:
                raise AddressError(f"{self.serves}: {exc}") from None
            log.warning("%s on %s", self.serves, self.bound)
            return
        ready = trio.Event()

        async def serve_forever():
            # A system task must not raise: see the class comment.
            try:
                async with trio.open_nursery() as n:
                    self.bound = await n.start(server.serve, self.address, self.allow_remote)
                    log.warning("%s on %s", self.serves, self.bound)
                    ready.set()
            except Exception as exc:  # noqa: BLE001 - OSError may arrive inside an ExceptionGroup
                errors = exc.exceptions if isinstance(exc, ExceptionGroup) else [exc]
                log.error("%s on %s stopped or never started: %s; the relay goes on without it",
                          self.serves, self.address, "; ".join(map(str, errors)))
            finally:
                ready.set()

        trio.lowlevel.spawn_system_task(serve_forever, name=f"hsmproxy {self.serves}")
        await ready.wait()

    async def on_connection(self, conn, event: str) -> None:
        if not self._started:
            await self.start()


class ControlApi(HttpServerHook):
    """The control API: fault rules, held messages, health, and the shadow state when there is one.

    Others add routes to ``routes`` before the run (``/metrics``) and providers to
    ``health_extra`` (callables returning dicts merged into ``/health``).
    """

    def __init__(self, address: Address, runtime: FaultRuntime, *, shadow=None, token: str | None = None,
                 allow_remote: bool = False):
        super().__init__(address, "control API", token=token, allow_remote=allow_remote)
        self.runtime = runtime
        self.shadow = shadow  # the shadow hook (state_jsonable, divergences_jsonable), if the proxy keeps one
        self.health_extra: list[Callable[[], dict]] = []
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
