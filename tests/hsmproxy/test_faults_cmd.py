"""``hsmproxy faults`` as a real process against a real control server."""

import json
import sys

import trio

from proxy.addons.control_api import add_fault_routes
from proxy.trio.addresses import Address
from proxy.trio.http_server import HttpServer, RouteTable
from faults.engine import FaultEngine
from proxy.addons.fault_runtime import FaultRuntime


async def hsmproxy(*args):
    result = await trio.run_process([sys.executable, "-m", "hsmproxy.cli", *args], capture_stdout=True,
                                    capture_stderr=True, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_cli_drives_a_running_control_server(tmp_path):
    runtime = FaultRuntime(FaultEngine(seed=4), allowed=True)
    routes = RouteTable()
    add_fault_routes(routes, runtime)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(HttpServer(routes).serve, Address.tcp("127.0.0.1", 0))
            ctl = ["faults", "--control", str(bound)]
            rc, out, err = await hsmproxy(*ctl, "add", "!hsmd_sign_remote_commitment_tx*3 dbid=7", "~signing ms=5")
            assert rc == 0, err
            assert [r.name for r in runtime.engine.rules] == ["rule1", "rule2"]
            rc, out, _ = await hsmproxy(*ctl, "--json", "list")
            assert rc == 0 and [r["action"] for r in json.loads(out)["rules"]] == ["kill-node", "delay"]
            rc, out, err = await hsmproxy(*ctl, "add", "-hsmd_sign_remote_comitment_tx")
            assert rc == 1 and "did you mean 'hsmd_sign_remote_commitment_tx'" in err
            rc, out, _ = await hsmproxy(*ctl, "remove", "rule1")
            assert rc == 0 and [r.name for r in runtime.engine.rules] == ["rule2"]
            rc, out, _ = await hsmproxy(*ctl, "disable")
            assert rc == 0 and not runtime.engine.enabled
            rc, out, _ = await hsmproxy(*ctl, "health")
            assert rc == 0 and "seed: 4" in out and "faults_enabled: True" in out
            nursery.cancel_scope.cancel()
    rc, _, err = await hsmproxy("faults", "--control", str(bound), "list")
    assert rc == 3 and "cannot reach the control API" in err


async def test_cli_checks_plans_offline(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('seed = 3\n[[rule]]\nmessage = "hsmd_sign_remote_commitment_tx"\naction = "kill-node"\npoint = "reply"\n')
    rc, out, _ = await hsmproxy("faults", "--json", "check", str(plan))
    assert rc == 0 and json.loads(out)["seed"] == 3
    plan.write_text('[[rule]]\nmessage = "hsmd_sign_remote_comit"\naction = "kill-node"\n')
    rc, _, err = await hsmproxy("faults", "check", str(plan))
    assert rc == 1 and "unknown message 'hsmd_sign_remote_comit'" in err and "did you mean" in err
