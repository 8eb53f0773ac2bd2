"""``hsmproxy decode`` as a user runs it: a real subprocess, real files and pipes."""

from __future__ import annotations

import json
import subprocess
import sys
from tests.paths import CAPTURE

VECTORS = CAPTURE


def decode(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hsmproxy.cli", "decode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_capture_file_as_json_redacts_secrets_and_reports_the_malformed_one():
    result = decode(str(VECTORS), "--json")
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == sum(1 for line in VECTORS.read_text().splitlines() if '"kind": "msg"' in line)
    ecdh = [line for line in lines if line.get("name") == "hsmd_ecdh_resp"]
    assert ecdh and all(line["fields"]["ss"] == "<redacted>" for line in ecdh)
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and errors[0]["field"] == "n" and errors[0]["offset"] == 2
    assert "1 of" in result.stderr and "Traceback" not in result.stderr


def test_show_secrets_reveals_them():
    result = decode(str(VECTORS), "--json", "--show-secrets", "--only", "hsmd_ecdh_resp")
    shown = [json.loads(line) for line in result.stdout.splitlines() if '"name"' in line and "error" not in line]
    assert shown and all(len(line["fields"]["ss"]) == 64 for line in shown)


def test_hex_argument_body_and_frame_give_the_same_tree():
    body = decode("0012000000000000002a")
    framed = decode("0000000a0012000000000000002a")
    assert body.returncode == framed.returncode == 0
    assert "hsmd_get_per_commitment_point" in body.stdout and "42" in body.stdout
    assert body.stdout.split(" ", 2)[2] == framed.stdout.split(" ", 2)[2]


def test_hex_lines_on_stdin_go_on_after_bad_lines():
    result = decode(stdin="0012000000000000002a\nnot-hex\n00840002\n")
    assert result.returncode == 2
    assert "stdin line 2" in result.stderr and "Traceback" not in result.stderr
    assert "hsmd_get_per_commitment_point" in result.stdout
    assert "trailing bytes" in result.stdout


def test_malformed_hex_exits_1_without_traceback():
    result = decode("008402")
    assert result.returncode == 1
    assert "hsmd_check_outpoint_reply.is_buried at byte 2" in result.stdout
    assert "Traceback" not in result.stderr


def test_forcing_body_mode_keeps_frame_like_bytes_as_trailing():
    result = decode("00840002ff", "--framed", "no", "--json")
    assert result.returncode == 0
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["name"] == "hsmd_check_outpoint_reply" and line["trailing"] == "02ff"


def test_unreadable_input_names_it():
    result = decode("/nonexistent/capture.jsonl")
    assert result.returncode == 2
    assert "/nonexistent/capture.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_decode():
    result = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "decode" in result.stdout


def test_trace_file_decodes_with_secrets_still_redacted(tmp_path):
    import trio

    import wire
    from proxy.core.hooks import REPLY_BEFORE, REQUEST_BEFORE, ConnContext, Exchange
    from faults.engine import FaultEvent
    from proxy.addons.trace import TraceHook

    path = tmp_path / "run.trace"
    hook = TraceHook(str(path))
    conn = ConnContext(3, "client", peer_id=bytes(33), dbid=7, permissions=1)
    request = bytes.fromhex("0001") + bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    reply = wire.encode(wire.build("hsmd_ecdh_resp", ss=b"\x42" * 32))

    async def record():
        await hook.on_connection(conn, "opened")
        ex = Exchange(conn=conn, seq=0, request_raw=request, request=wire.decode(request))
        await hook.on_request(ex, REQUEST_BEFORE)
        ex.reply_raw, ex.reply = reply, wire.decode(reply)
        await hook.on_reply(ex, REPLY_BEFORE)
        hook.fault(FaultEvent("rule1", "delay", REPLY_BEFORE, "client:7", 0, "hsmd_ecdh_resp"))
        await hook.on_signer_exit(0)

    trio.run(record)
    hook.close()
    result = decode(str(path), "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line.get("event") or line.get("name") for line in lines] == [
        "connection opened", "hsmd_ecdh_req", "hsmd_ecdh_resp",
        "fault delay at reply.before_forward on hsmd_ecdh_resp (client:7 seq 0, rule rule1)",
        "signer exited with status 0"]
    assert lines[1]["conn"] == "client#3(dbid=7)" and lines[1]["dir"] == "request"
    assert lines[2]["fields"]["ss"] == "<redacted>"
    assert "42424242" not in result.stdout
    tree = decode(str(path))
    assert "body not recorded" in tree.stdout and "signer exited" in tree.stdout
