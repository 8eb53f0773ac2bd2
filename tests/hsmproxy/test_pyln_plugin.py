"""The pytest plugin against real Core Lightning: an inner pytest run of pyln-testing tests with
``--hsmproxy``, as a plugin author or a CLN developer would run theirs.

Skipped without lightningd, bitcoind and pyln-testing (tests/cln.py says how to get them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


from tests.cln import cln_env, needs_cln

pytestmark = needs_cln

INNER_TIMEOUT = 600

PAYMENTS = '''
from pyln.testing.fixtures import *  # noqa: F401,F403  (bitcoind, node_factory, ...)


def test_payments(node_factory, hsmproxy):
    l1, l2 = node_factory.line_graph(2)
    for amount in (10_000_000, 20_000_000, 30_000_000):
        l1.pay(l2, amount)
    l2.pay(l1, 5_000_000)
    handle = hsmproxy(l1)
    state = handle.state()
    assert len(state["channels"]) == 1, state
    assert state["channels"][0]["next_counterparty_commit_num"] >= 4
    assert handle.divergences() == []
    assert handle.trace_path.exists()
    with open("handles.json", "w") as f:
        json.dump({"trace": str(handle.trace_path), "wal": str(handle.wal_dir),
                   "script": open(handle.directory / "hsmd-wrapper.sh").read()}, f)
'''

# The write-up's bug on real software: lightningd is killed after the signer signed counterparty
# commitment N and before lightningd saw the signature; after the restart it re-signs N with
# another HTLC, and stock hsmd signs both.
CRASH_WINDOW = '''
from pyln.testing.fixtures import *  # noqa: F401,F403
from pyln.testing.utils import wait_for


def test_crash_in_the_window(node_factory, hsmproxy):
    l1, l2 = node_factory.line_graph(2, opts=[{"may_fail": True, "may_reconnect": True},
                                              {"may_reconnect": True}])
    l1.pay(l2, 10_000)
    proxy = hsmproxy(l1)
    channel = proxy.state()["channels"][0]
    n = channel["next_counterparty_commit_num"]
    proxy.add_fault(f"!hsmd_sign_remote_commitment_tx dbid={channel['dbid']} commit_num=={n}")
    inv = l2.rpc.invoice(20_000, "crash", "crash")
    try:
        l1.rpc.pay(inv["bolt11"])
    except Exception:
        pass  # lightningd was killed mid-payment
    l1.daemon.wait(timeout=60)
    proxy.wait_stopped()
    # The warning at the moment of the crash: the signer signed commitment n, the node never saved it.
    warned = [d for d in proxy.divergences() if d["kind"] == "crashed_in_window"]
    assert [(d["index"], d["status"]) for d in warned] == [(n, "possible")], warned
    l1.start()
    l1.rpc.connect(l2.info["id"], "localhost", l2.port)
    wait_for(lambda: l1.rpc.listpeerchannels()["channels"][0]["state"] == "CHANNELD_NORMAL")
    l1.pay(l2, 33_000)  # another HTLC at commitment n
    kinds = {(d["kind"], d["status"]) for d in proxy.divergences()}
    assert ("double_signed", "confirmed") in kinds, kinds
'''


def run_inner(tmp_path, source: str, *options: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text("import json\n" + textwrap.dedent(source))
    env = cln_env()
    (tmp_path / "ltests").mkdir(exist_ok=True)
    env["TEST_DIR"] = str(tmp_path / "ltests")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "test_inner.py", *options],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=INNER_TIMEOUT,
    )


def test_payments_pass_behind_the_proxy_and_the_summary_reports_each_node(tmp_path):
    done = run_inner(tmp_path, PAYMENTS, "--hsmproxy")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    handles = json.loads((tmp_path / "handles.json").read_text())
    assert "hsmproxy.cli wrap --signer" in handles["script"] and "--wal-dir" in handles["script"]
    assert "hsmproxy" in out and "divergences: none" in out, out[-3000:]
    assert "lightningd-1" in out and "lightningd-2" in out


PLAIN = '''
from pyln.testing.fixtures import *  # noqa: F401,F403


def test_plain(node_factory):
    l1, l2 = node_factory.line_graph(2)
    l1.pay(l2, 10_000)
    assert not [arg for arg in l1.daemon.cmd_line if arg.startswith("--subdaemon")]
'''


def test_without_the_option_nothing_is_wrapped(tmp_path):
    done = run_inner(tmp_path, PLAIN)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "1 passed" in out, out[-3000:]
    assert "hsmproxy" not in out


def test_a_confirmed_double_signature_fails_the_test_and_names_node_and_trace(tmp_path):
    done = run_inner(tmp_path, CRASH_WINDOW, "--hsmproxy", "--hsmproxy-faults")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-6000:]
    assert "1 passed" in out and "1 error" in out, out[-6000:]
    assert "hsmproxy confirmed divergences" in out and "double_signed (confirmed)" in out
    assert "lightningd-1" in out and "trace-2.mp" in out


def test_fail_on_none_only_reports(tmp_path):
    done = run_inner(tmp_path, CRASH_WINDOW, "--hsmproxy", "--hsmproxy-faults", "--hsmproxy-fail-on=none")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "double_signed(confirmed) x" in out


def test_an_unknown_divergence_kind_is_a_usage_error(tmp_path):
    done = run_inner(tmp_path, PAYMENTS, "--hsmproxy", "--hsmproxy-fail-on=double_sined")
    assert done.returncode == 4
    assert "unknown divergence kind(s) double_sined" in done.stderr + done.stdout
