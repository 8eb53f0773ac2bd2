"""``hsmproxy decode`` as a user runs it: a real subprocess, real files and pipes."""

from __future__ import annotations

import json
import subprocess
import sys

import trio

import wire
from faults.engine import FaultEvent
from proxy.addons.trace import TraceHook
from proxy.core.hooks import REPLY_BEFORE, REQUEST_BEFORE, ConnContext, Exchange
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
    # bytes the codec cannot read may be anything: their length only, unless asked
    assert line["name"] == "hsmd_check_outpoint_reply" and line["trailing"] == "<redacted: 2 bytes>"
    shown = decode("00840002ff", "--framed", "no", "--json", "--show-secrets")
    assert json.loads(shown.stdout)["trailing"] == "02ff"


def test_unreadable_input_names_it():
    result = decode("/nonexistent/capture.jsonl")
    assert result.returncode == 2
    assert "/nonexistent/capture.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_decode():
    result = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "decode" in result.stdout


def test_trace_file_decodes_with_secrets_still_redacted(tmp_path):
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


SECRET = bytes(range(0x40, 0x60))
NODE = bytes.fromhex("02" + "ab" * 32)


def _bad_request(embedded: bytes) -> str:
    return wire.encode(wire.build("hsmstatus_client_bad_request", id=NODE, description="refused", msg=embedded)).hex()


def test_a_refused_request_is_decoded_and_redacted_in_the_tree_and_json():
    request = wire.encode(wire.build("hsmd_check_future_secret", n=5, commitment_secret=SECRET))
    whole, cut = _bad_request(request), _bad_request(request[:-1])
    tree = decode(whole, cut)
    assert tree.returncode == 0, tree.stderr
    assert "msg: hsmd_check_future_secret (22, 42 bytes)" in tree.stdout
    assert "commitment_secret: <redacted>" in tree.stdout
    assert "does not decode" in tree.stdout and SECRET[:8].hex() not in tree.stdout
    whole_json, cut_json = [json.loads(x) for x in decode(whole, cut, "--json").stdout.splitlines()]
    assert whole_json["fields"]["msg"] == {"type": 22, "name": "hsmd_check_future_secret", "len": 42,
                                           "fields": {"n": 5, "commitment_secret": "<redacted>"}}
    assert cut_json["fields"]["msg"] == {"type": 22, "len": 41, "undecodable": True}
    shown = decode(whole, "--json", "--show-secrets").stdout
    assert SECRET.hex() in shown


def test_a_malformed_body_is_not_echoed_unless_asked():
    result = decode("0016" + "00" * 8 + SECRET[:20].hex(), "--json")  # check_future_secret, cut short
    assert result.returncode == 1
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["len"] == 30 and "hex" not in line and SECRET[:8].hex() not in result.stdout


def test_a_trace_shows_all_three_record_forms_and_no_secret(tmp_path):
    """A body kept whole, a redacted decoding, and a type and length only (a frame that did not
    decode, and every frame of a --no-parse trace)."""
    conn = ConnContext(3, "client", peer_id=NODE, dbid=7, permissions=8)
    request = wire.encode(wire.build("hsmd_get_per_commitment_point", n=3))
    reply = wire.encode(wire.build("hsmd_get_per_commitment_point_reply", per_commitment_point=bytes.fromhex(
        "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"), old_commitment_secret=SECRET))
    cut = wire.encode(wire.build("hsmd_check_future_secret", n=5, commitment_secret=SECRET))[:-1]

    async def record(hook, parsed):
        ex = Exchange(conn=conn, seq=0, request_raw=request, request=wire.decode(request) if parsed else None)
        await hook.on_request(ex, REQUEST_BEFORE)
        ex.reply_raw, ex.reply = reply, wire.decode(reply) if parsed else None
        await hook.on_reply(ex, REPLY_BEFORE)
        await hook.on_request(Exchange(conn=conn, seq=1, request_raw=cut, request=None), REQUEST_BEFORE)
        hook.close()

    for parsed in (True, False):
        path = tmp_path / f"parsed-{parsed}.trace"
        trio.run(record, TraceHook(str(path), parsed=parsed), parsed)
        tree, as_json = decode(str(path)), decode(str(path), "--json")
        assert tree.returncode == as_json.returncode == 0, tree.stderr + as_json.stderr
        for out in (tree.stdout, as_json.stdout, path.read_bytes().hex()):
            assert SECRET[:8].hex() not in out
        lines = [json.loads(x) for x in as_json.stdout.splitlines()]
        assert [line["name"] for line in lines] == [
            "hsmd_get_per_commitment_point", "hsmd_get_per_commitment_point_reply", "hsmd_check_future_secret"]
        assert lines[2] == {"seq": 4, "conn": "client#3(dbid=7)", "dir": "request", "type": 22,
                            "name": "hsmd_check_future_secret", "len": 41, "recorded": "type-and-length"}
        assert "(22, 41 bytes) (type and length only: not decoded" in " ".join(tree.stdout.split())
        if parsed:
            assert lines[0]["fields"] == {"n": 3} and "recorded" not in lines[0]  # kept whole
            assert lines[1]["recorded"] == "redacted" and lines[1]["fields"]["old_commitment_secret"] == "<redacted>"
            assert "old_commitment_secret: <redacted>" in tree.stdout
        else:
            assert all(line["recorded"] == "type-and-length" for line in lines)


def test_a_long_frame_in_a_trace_shows_its_whole_length_and_the_bytes_after_its_prefix(tmp_path):
    """The relay decodes a long frame from its first bytes; the trace keeps those and counts the
    rest, and decode says how many bytes followed (hsmd ignores them, the signer still got them)."""
    path = tmp_path / "long.trace"
    conn = ConnContext(3, "client", peer_id=NODE, dbid=7, permissions=8)
    request = wire.encode(wire.build("hsmd_get_per_commitment_point", n=3))

    async def record(hook):
        await hook.on_request(Exchange(conn=conn, seq=0, request_raw=request, request=wire.decode(request),
                                       request_tail=5_000_000), REQUEST_BEFORE)
        hook.close()

    for secrets in (False, True):
        trio.run(record, TraceHook(str(path), secrets=secrets))
        (line,) = [json.loads(x) for x in decode(str(path), "--json").stdout.splitlines()]
        assert line["tail"] == 5_000_000 and line["name"] == "hsmd_get_per_commitment_point"
        assert "5000000 more bytes followed" in decode(str(path)).stdout
