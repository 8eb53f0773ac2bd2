"""The control API server over real sockets (TCP on 127.0.0.1 and a Unix socket)."""

import json
import os
import stat

import pytest
import trio

import wire
from faults.engine import FaultEngine, FaultEvent, Observation
from faults.plan import parse_one_line
from hsmproxy.control_client import ControlClient, ControlError
from proxy.addons.control_api import ControlApi, HttpServerHook, add_fault_routes
from proxy.addons.fault_runtime import FaultRuntime, FaultsNotEnabled
from proxy.trio.addresses import Address, AddressError, parse_address
from proxy.trio.http_server import HttpServer, Response, RouteTable


async def start(nursery, runtime, address=None, token=None, allow_remote=False, extra_routes=None, **kw):
    routes = RouteTable()
    add_fault_routes(routes, runtime)
    for method, path, handler in extra_routes or ():
        routes.add(method, path, handler)
    server = HttpServer(routes, token=token, **kw)
    bound = await nursery.start(server.serve, address or Address.tcp("127.0.0.1", 0), allow_remote)
    return bound


async def call(client, fn, *args, **kwargs):
    return await trio.to_thread.run_sync(lambda: getattr(client, fn)(*args, **kwargs))


async def test_rules_lifecycle_over_tcp():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            runtime = FaultRuntime(FaultEngine(seed=9), allowed=True)
            client = ControlClient(await start(nursery, runtime))
            health = await call(client, "health")
            assert health["ok"] and health["faults_enabled"] and health["seed"] == 9 and not health["faults_active"]
            added = await call(client, "add", "-hsmd_sign_remote_commitment_tx*2; !hsmd_get_per_commitment_point")
            assert [r["name"] for r in added] == ["rule1", "rule2"]
            added = await call(client, "add", rule={"action": "delay", "ms": 5, "family": "signing", "name": "slow"})
            assert added[0]["name"] == "slow" and added[0]["ms"] == 5
            assert [r["name"] for r in await call(client, "rules")] == ["rule1", "rule2", "slow"]
            assert [r["name"] for r in await call(client, "add", "$hsmd_init")] == ["rule3"]
            await call(client, "remove", "rule1")
            assert [r.name for r in runtime.engine.rules] == ["rule2", "slow", "rule3"]
            await call(client, "enable", False)
            assert not runtime.engine.enabled and not (await call(client, "health"))["faults_active"]
            await call(client, "enable", True)
            assert await call(client, "clear") == 3 and runtime.engine.rules == []
            trace = await call(client, "trace")
            assert trace == {"seed": 9, "events": 0, "trace_hash": runtime.engine.trace_hash}
            nursery.cancel_scope.cancel()


async def test_errors_name_the_input():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            runtime = FaultRuntime(FaultEngine(), allowed=True)
            client = ControlClient(await start(nursery, runtime))
            with pytest.raises(ControlError, match="did you mean 'hsmd_sign_remote_commitment_tx'") as err:
                await call(client, "add", "-hsmd_sign_remote_comitment_tx")
            assert err.value.status == 400
            await call(client, "add", "$hsmd_init name=x")
            with pytest.raises(ControlError, match="exists already"):
                await call(client, "add", "$hsmd_init name=x")
            with pytest.raises(ControlError, match="no rule named 'nope'") as err:
                await call(client, "remove", "nope")
            assert err.value.status == 404
            with pytest.raises(ControlError, match="no held message 4"):
                await call(client, "release", 4)
            with pytest.raises(ControlError, match="no such endpoint") as err:
                await call(client, "request", "GET", "/nope")
            with pytest.raises(ControlError, match="use GET") as err:
                await call(client, "request", "PUT", "/health")
            assert err.value.status == 405
            with pytest.raises(ControlError, match="without the shadow state"):
                await call(client, "request", "GET", "/shadow/state")
            # a rejected batch adds nothing
            with pytest.raises(ControlError):
                await call(client, "add", "$hsmd_init name=y; $hsmd_bogus")
            assert [r.name for r in runtime.engine.rules] == ["x"]
            index = await call(client, "request", "GET", "/")
            assert {"method": "POST", "path": "/faults/rules"} in [
                {k: e[k] for k in ("method", "path")} for e in index["endpoints"]]
            nursery.cancel_scope.cancel()


async def test_rules_are_refused_without_enable_faults():
    with pytest.raises(FaultsNotEnabled, match="--enable-faults"):
        FaultRuntime(FaultEngine(parse_one_line("$hsmd_init")), allowed=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            runtime = FaultRuntime(FaultEngine(), allowed=False)
            client = ControlClient(await start(nursery, runtime))
            with pytest.raises(ControlError, match="--enable-faults") as err:
                await call(client, "add", "$hsmd_init")
            assert err.value.status == 403 and runtime.engine.rules == []
            assert (await call(client, "health"))["faults_enabled"] is False
            nursery.cancel_scope.cancel()


async def test_unix_socket_is_0600_and_removed_after(tmp_path):
    path = str(tmp_path / "control.sock")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bound = await start(nursery, FaultRuntime(allowed=True), parse_address(f"unix:{path}"))
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert (await call(ControlClient(bound), "health"))["ok"]
            nursery.cancel_scope.cancel()
    assert not os.path.exists(path)


async def test_remote_binding_needs_flag_and_token():
    with pytest.raises(AddressError, match="--control-token"):
        await HttpServer(RouteTable()).serve(parse_address("0.0.0.0:0"))
    with pytest.raises(AddressError, match="--control-allow-remote"):
        await HttpServer(RouteTable(), token="t").serve(parse_address("0.0.0.0:0"))


async def test_token_is_required_when_set():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bound = await start(nursery, FaultRuntime(allowed=True), token="s3cret")
            with pytest.raises(ControlError, match="token") as err:
                await call(ControlClient(bound), "health")
            assert err.value.status == 401
            with pytest.raises(ControlError):
                await call(ControlClient(bound, token="wrong"), "health")
            assert (await call(ControlClient(bound, token="s3cret"), "health"))["ok"]
            nursery.cancel_scope.cancel()


async def test_control_answers_within_bound_under_load_with_held_messages():
    """Toxiproxy's API hangs under traffic; ours answers every operation within its bound."""
    runtime = FaultRuntime(FaultEngine(seed=1), allowed=True)
    runtime.add_rule(parse_one_line("~hsmd_get_per_commitment_point ms=1 count=all")[0])
    request = wire.decode(bytes.fromhex("0012" + "00" * 8))  # hsmd_get_per_commitment_point n=0

    async def busy_relay(conn):
        for seq in range(100_000):
            runtime.engine.decide(Observation("request.before_forward", conn, "client", seq, request, raw=b""))
            await trio.lowlevel.checkpoint()

    async def slow(request):
        await trio.sleep(60)

    async def held_message(n):
        held = runtime.hold(FaultEvent("r", "hold", "request.before_forward", "c", n, "m"))
        await held.release.wait()

    latencies = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bound = await start(nursery, runtime, extra_routes=[("GET", "/slow", slow)], handler_timeout=0.5)
            for n in range(20):
                nursery.start_soon(held_message, n)
            for conn in ("client:1", "client:2"):
                nursery.start_soon(busy_relay, conn)
            # a client that connects and never finishes its request must not block the others
            idle = await trio.open_tcp_stream(bound.host, bound.port)
            await idle.send_all(b"GET /health HTTP/1.1\r\n")

            async def operate(i):
                client = ControlClient(bound)
                for op in (lambda: client.add(f"&hsmd_init name=r{i}"), client.rules, client.held,
                           lambda: client.remove(f"r{i}"), client.health, client.trace):
                    start_time = trio.current_time()
                    with trio.fail_after(2):
                        await trio.to_thread.run_sync(op)
                    latencies.append(trio.current_time() - start_time)

            async with trio.open_nursery() as ops:
                for i in range(8):
                    ops.start_soon(operate, i)
            with trio.fail_after(2):
                with pytest.raises(ControlError, match="did not finish within 0.5 s") as err:
                    await trio.to_thread.run_sync(lambda: ControlClient(bound).request("GET", "/slow"))
            assert err.value.status == 503
            with trio.fail_after(2):
                assert await trio.to_thread.run_sync(lambda: ControlClient(bound).release()) == list(range(1, 21))
            assert runtime.held == {}
            assert runtime.engine.event_count > 0  # the relay was really busy meanwhile
            await idle.aclose()
            nursery.cancel_scope.cancel()
    assert len(latencies) == 48 and max(latencies) < 2


async def test_malformed_http_gets_400_and_keep_alive_works():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bound = await start(nursery, FaultRuntime(allowed=True))
            bad = await trio.open_tcp_stream(bound.host, bound.port)
            await bad.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            answer = b""
            while chunk := await bad.receive_some(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in answer
            good = await trio.open_tcp_stream(bound.host, bound.port)
            for _ in range(2):  # two requests on one connection
                await good.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await good.receive_some(4096)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += await good.receive_some(4096)
                assert json.loads(body)["ok"] is True
            await good.aclose()
            nursery.cancel_scope.cancel()


async def test_control_api_that_cannot_bind_logs_and_lets_the_relay_run(caplog, tmp_path):
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("x")
    control = ControlApi(parse_address(f"unix:{not_a_socket}"), FaultRuntime(allowed=True))
    with trio.fail_after(5):
        await control.on_connection(None, "opened")  # what the wrapper's first connection does
        await control.on_connection(None, "opened")  # started once only
    assert control.bound is None and "is not a socket" in caplog.text
    assert "relay goes on" in caplog.text and f"unix:{not_a_socket}" in caplog.text
    assert not_a_socket.read_text() == "x"  # a file in the way is never removed


async def test_control_api_serves_extra_routes(tmp_path):
    control = ControlApi(parse_address(f"unix:{tmp_path / 'c.sock'}"), FaultRuntime(allowed=True))

    async def metrics(request):
        return Response.text("hsmproxy_up 1\n", content_type="text/plain; version=0.0.4")

    control.routes.add("GET", "/metrics", metrics)
    control.health_extra.append(lambda: {"wal": "ok"})
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await control.start(nursery)
            client = ControlClient(control.bound)
            assert (await call(client, "request", "GET", "/metrics")) == {"text": "hsmproxy_up 1\n"}
            assert (await call(client, "health"))["wal"] == "ok"
            nursery.cancel_scope.cancel()


async def test_a_second_control_api_on_a_live_socket_path_refuses_and_leaves_the_first_alone(tmp_path):
    """Issue 12 item 6: a second proxy with the same --control unix:PATH used to unlink the first
    one's live socket, and the first, when it stopped, deleted the second's."""
    path = str(tmp_path / "control.sock")
    first = ControlApi(parse_address(f"unix:{path}"), FaultRuntime(FaultEngine(seed=1), allowed=True))
    second = ControlApi(parse_address(f"unix:{path}"), FaultRuntime(FaultEngine(seed=2), allowed=True))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await first.start(nursery)
            inode = os.stat(path).st_ino
            with pytest.raises(AddressError, match=f"control API: unix:{path}: another process is already listening"):
                await second.start(nursery)
            assert os.stat(path).st_ino == inode
            assert (await call(ControlClient(first.bound), "health"))["seed"] == 1
            nursery.cancel_scope.cancel()
    assert not os.path.exists(path)  # the first removed its own file on the way out


async def test_a_socket_file_is_removed_at_stop_only_while_it_is_ours(tmp_path):
    path = tmp_path / "control.sock"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await start(nursery, FaultRuntime(allowed=True), parse_address(f"unix:{path}"))
            path.unlink()  # someone else took the path over meanwhile
            path.write_text("theirs")
            nursery.cancel_scope.cancel()
    assert path.read_text() == "theirs"


async def test_an_address_in_use_is_named(tmp_path):
    (taken,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = taken.socket.getsockname()[1]
    metrics = HttpServerHook(Address.tcp("127.0.0.1", port), "Prometheus metrics (GET /metrics only)")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(AddressError, match=f"Prometheus metrics.*cannot listen on 127.0.0.1:{port}"):
                await metrics.start(nursery)
    await taken.aclose()
