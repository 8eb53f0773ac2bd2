"""`hsmproxy wrap` in front of a real signer process, driven by a harness that plays lightningd.

Real processes, real socketpairs, real SCM_RIGHTS. The signer is tests/hsmd_like.py (answers from
the real hsmd captures, errors as hsmd makes them); the comparisons run the same session once
directly and once through the wrapper, and demand byte-identical results.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import wire
from proxy.addons.trace import read_trace
from tests import ld_harness as h

pytestmark = pytest.mark.timeout(60)

NODE_ID = bytes.fromhex("02a8a0e038d28608037487c049729943070050ff19b51810ca5f941dd3bfab2945")


@pytest.fixture
def signer(tmp_path: Path) -> Path:
    return h.hsmd_like_script(tmp_path)


def run_session(program: Path, cwd: Path, argv_extra=()) -> tuple[list, bytes, int]:
    ld = h.Lightningd([str(program), *argv_extra], cwd)
    try:
        h.replay(ld, h.capture_session("main"))
        ld.close_master()
        status = ld.read_status_until_eof()
        return ld.transcript, status, ld.wait()
    finally:
        ld.close()


def client_hsmfd(dbid: int, permissions: int) -> bytes:
    return wire.encode(wire.build("hsmd_client_hsmfd", id=NODE_ID, dbid=dbid, permissions=permissions))


def init_body() -> bytes:
    return bytes.fromhex(h.capture_session("main")[2]["hex"])


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True  # exited; its parent (the wrapper) will reap it
        except (FileNotFoundError, ProcessLookupError):  # reaped (ESRCH while reading its stat)
            return True
        time.sleep(0.02)
    return False


def test_version_is_the_signers_byte_for_byte(signer, tmp_path):
    wrapper = h.wrapper_script(tmp_path, signer)
    assert h.version_check(wrapper, tmp_path) == h.version_check(signer, tmp_path)
    assert h.version_check(wrapper, tmp_path)[0] == b"v26.06-258-g090f4b0\n"


def test_whole_lightningd_session_is_identical_with_and_without_the_wrapper(signer, tmp_path):
    direct = run_session(signer, tmp_path)
    trace = tmp_path / "session.trace"
    wrapped = run_session(h.wrapper_script(tmp_path, signer, "--trace", str(trace)), tmp_path)
    assert wrapped == direct
    transcript, status, code = wrapped
    assert code == 2  # hsmd exits 2 when lightningd closes the master
    # the replies are the real hsmd's, so the relay delivered them intact
    captured = [r["hex"] for r in h.capture_session("main") if r["kind"] == "msg" and r["dir"] == "signer->node"
                and r["conn"] != "status"]
    assert [x for _, what, x in transcript if what == "reply"] == captured
    assert os.stat(trace).st_mode & 0o777 == 0o600
    records = list(read_trace(str(trace)))
    clients = {r["conn"]["conn_id"]: r["conn"] for r in records if r["kind"] == "conn" and r["event"] == "opened"
               and r["conn"]["role"] == "client"}
    assert sorted((c["dbid"], c["permissions"]) for c in clients.values()) == sorted(
        [(0, 1), (0, 3), (1, 24), (1, 447), (1, 12), (1, 40), (2, 344), (1, 152), (1, 8), (1, 8)])
    assert all(c["parent_id"] == 1 and c["peer_id"] is not None for c in clients.values())
    assert sum(1 for r in records if r["kind"] == "conn" and r["event"] == "replaced") == 6
    assert records[-1] == {**records[-1], "kind": "exit", "status": 2}
    # secrets never reach the trace: derived secrets, ECDH results, revealed revocation secrets
    secret_replies = [r for r in records if r.get("redacted")]
    decoded_names = {r["msg"]["name"] for r in secret_replies if "msg" in r}  # the rest: type and length only
    assert decoded_names >= {"hsmd_derive_secret_reply", "hsmd_ecdh_resp", "hsmd_revoke_commitment_tx_reply"}
    blob = trace.read_bytes()
    for _, what, reply in transcript:
        if reply.startswith("007f") or reply.startswith("0064"):  # derive_secret_reply, ecdh_resp
            assert bytes.fromhex(reply)[2:] not in blob


def test_developer_flag_and_preinit_pass_through(signer, tmp_path):
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, signer)), "--developer"], tmp_path)
    try:
        ld.master.sendall(wire.frame(bytes.fromhex("0063") + b"\x00\x00"))  # dev_preinit: no reply
        assert ld.request("master", init_body())[:2] == b"\x00\x72"
    finally:
        ld.close()


def test_bad_request_on_the_master_fails_like_hsmd(signer, tmp_path):
    wrapper = h.wrapper_script(tmp_path, signer)
    results = []
    for program in (signer, wrapper):
        ld = h.Lightningd([str(program)], tmp_path)
        try:
            assert ld.request("master", init_body()) is not None
            assert ld.request("master", b"\x27\x0fgarbage") is None  # no reply, EOF
            status = ld.read_status_until_eof()
            results.append((status, ld.wait()))
        finally:
            ld.close()
    assert results[0] == results[1]
    status, code = results[1]
    assert code == 242
    last = wire.decode(h.split_frames(status)[-1])
    assert last.name == "status_fail" and last.fields["desc"].startswith("Error parsing 9999")


def test_bad_request_on_a_client_closes_only_that_client(signer, tmp_path):
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, signer))], tmp_path)
    try:
        ld.request("master", init_body())
        ld.client_hsmfd("c", client_hsmfd(5, 8))
        assert ld.request("c", b"\x00\x13" + bytes(10)) is None  # sign_remote_commitment_tx needs bit 16
        ld.drain_status(quiet=0.2)
        bad = [wire.decode(b) for b in ld.status_frames() if b[:2] == b"\x03\xe8"]
        assert len(bad) == 1 and bad[0].fields["id"] == NODE_ID and bad[0].fields["msg"] == b"\x00\x13" + bytes(10)
        assert ld.request("master", init_body())[:2] == b"\x00\x72"  # the master is still served
    finally:
        ld.close()


def test_oversize_frame_on_the_master_reaches_the_signer(signer, tmp_path):
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, signer))], tmp_path)
    try:
        ld.request("master", init_body())
        ld.master.sendall((1 << 27).to_bytes(4, "big") + b"junk")  # framing lost: relayed raw
        assert h.read_frame(ld.master) is None
        assert ld.wait() == 2
    finally:
        ld.close()


def test_signer_killed_by_a_signal_gives_128_plus_n_and_no_orphan(signer, tmp_path):
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, signer))], tmp_path)
    try:
        ld.request("master", init_body())
        (signer_pid,) = children_of(ld.proc.pid)
        os.kill(signer_pid, signal.SIGKILL)
        assert ld.wait() == 128 + signal.SIGKILL
        assert ld.request("master", init_body()) is None
    finally:
        ld.close()


def test_sigterm_to_the_wrapper_reaches_the_signer(signer, tmp_path):
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, signer))], tmp_path)
    try:
        ld.request("master", init_body())
        (signer_pid,) = children_of(ld.proc.pid)
        ld.proc.send_signal(signal.SIGTERM)
        assert ld.wait() == 128 + signal.SIGTERM
        assert wait_gone(signer_pid)
    finally:
        ld.close()


def test_client_fds_two_levels_deep_and_no_fd_leak(signer, tmp_path):
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, signer)), "--nested-clients"], tmp_path)
    try:
        ld.request("master", init_body())
        wrapper_fds = lambda: len(os.listdir(f"/proc/{ld.proc.pid}/fd"))  # noqa: E731
        baseline = wrapper_fds()
        for round_ in range(5):
            ld.client_hsmfd("outer", client_hsmfd(7, 1024 | 8))
            ld.client_hsmfd("inner", client_hsmfd(1, 8), via="outer")
            reply = ld.request("inner", bytes.fromhex("00120000000000000000"))  # get_per_commitment_point(0)
            assert reply is not None and reply[:2] == b"\x00\x76"
        # replaced clients were closed by the signer, and the proxy let go of them too
        for _ in range(50):
            if wrapper_fds() <= baseline + 4:  # outer + inner, each a node-side and signer-side socket
                break
            time.sleep(0.05)
        assert wrapper_fds() <= baseline + 4
        ld.close_master()
        assert ld.wait() == 2
    finally:
        ld.close()


def test_started_by_hand_it_says_what_to_do(signer, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "wrap", "--signer", str(signer)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, env=h.child_env(), timeout=30)
    assert done.returncode == 2
    assert "must be started by lightningd" in done.stderr


def test_a_killed_wrapper_leaves_no_signer_behind(signer, tmp_path):
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, signer))], tmp_path)
    try:
        ld.request("master", init_body())
        (signer_pid,) = children_of(ld.proc.pid)
        ld.proc.kill()
        assert ld.wait() == 128 + signal.SIGKILL
        assert wait_gone(signer_pid)  # its fd 3 reached EOF, and hsmd exits on that
    finally:
        ld.close()


def test_a_signer_that_cannot_start_is_reported(tmp_path):
    broken = h.write_script(tmp_path / "broken-signer", [])
    broken.write_text("#!/nonexistent/interpreter\n")
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, broken))], tmp_path)
    try:
        assert ld.wait() == 2
        assert ld.request("master", init_body()) is None
    finally:
        ld.close()


def test_a_second_proxy_on_a_wal_dir_in_use_refuses_and_a_killed_ones_successor_starts(signer, tmp_path):
    """Two proxies writing one WAL would corrupt each other's shadow: the second says which
    directory and whose pid. The lock is not in the signer (close-on-exec), so after a SIGKILL
    of the proxy the next one starts at once, its signer still alive or not."""
    wal = tmp_path / "wal"
    wrapper = h.wrapper_script(tmp_path, signer, "--wal-dir", str(wal))
    first = h.Lightningd([str(wrapper)], tmp_path)
    try:
        assert first.request("master", init_body())  # the first proxy relays: its WAL is open
        (signer_pid,) = children_of(first.proc.pid)
        fds = [os.readlink(f"/proc/{signer_pid}/fd/{fd}") for fd in os.listdir(f"/proc/{signer_pid}/fd")]
        assert str(wal / "proxy.lock") not in fds
        errors = tmp_path / "second.err"
        second_script = h.write_script(tmp_path / "second.sh", [f'exec "{wrapper}" "$@" 2>"{errors}"'])
        second = h.Lightningd([str(second_script)], tmp_path)
        try:
            assert second.wait() == 2
        finally:
            second.close()
        (line,) = errors.read_text().splitlines()
        assert line.startswith(f"hsmproxy: --wal-dir {wal}: WAL directory '{wal}' is in use by another proxy "
                               f"(pid {first.proc.pid})"), line
        first.proc.kill()
        assert first.wait() == 128 + signal.SIGKILL
    finally:
        first.close()
    third = h.Lightningd([str(wrapper)], tmp_path)
    try:
        assert third.request("master", init_body())
    finally:
        third.close()
