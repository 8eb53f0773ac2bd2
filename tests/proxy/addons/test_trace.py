"""The trace hook: 0600 files, secrets redacted unless asked, readable after a crash."""

import json
import os
import subprocess
import sys

import pytest

import wire
from proxy.core.hooks import REPLY_BEFORE, REQUEST_BEFORE, ConnContext, Drop, Exchange
from proxy.addons.trace import TraceFollower, TraceFormatError, TraceHook, read_trace
from tests import ld_harness as h

SECRET = bytes(range(1, 33))
MASTER = ConnContext(conn_id=1, role="master", permissions=1027)


def derive_secret_exchange() -> Exchange:
    request = wire.build("hsmd_derive_secret", info=b"bolt12-invoice-base")
    reply = wire.build("hsmd_derive_secret_reply", secret=SECRET)
    ex = Exchange(conn=MASTER, seq=3, request_raw=wire.encode(request), request=request)
    ex.reply_raw, ex.reply = wire.encode(reply), reply
    return ex


async def record(path, secrets: bool) -> list[dict]:
    hook = TraceHook(str(path), secrets=secrets)
    ex = derive_secret_exchange()
    await hook.on_request(ex, REQUEST_BEFORE)
    ex.verdict = Drop()
    await hook.on_reply(ex, REPLY_BEFORE)
    await hook.on_raw(MASTER, "request", b"\xff" * 40)
    await hook.on_connection(MASTER, "closed")
    await hook.on_signer_exit(242)
    hook.close()
    return list(read_trace(str(path)))


async def test_secrets_are_redacted_by_default_and_the_file_is_0600(tmp_path):
    path = tmp_path / "t.trace"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    header, request, reply, raw, conn, exit_ = await record(path, secrets=False)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert header["format"] == "hsmproxy-trace" and header["secrets"] is False
    assert request["raw"] == derive_secret_exchange().request_raw and request["seq"] == 3
    assert reply["raw"] is None and reply["redacted"] and reply["msg"]["fields"]["secret"] == wire.REDACTED
    assert reply["verdict"] == "Drop"
    assert raw["raw"] is None and raw["len"] == 40
    assert conn["event"] == "closed" and conn["conn"]["permissions"] == 1027
    assert exit_["status"] == 242
    assert SECRET not in path.read_bytes()


async def test_trace_secrets_keeps_them(tmp_path):
    records = await record(tmp_path / "t.trace", secrets=True)
    assert records[2]["raw"] == b"\x00\x7f" + SECRET and records[3]["raw"] == b"\xff" * 40


async def test_a_trace_cut_short_yields_its_complete_records(tmp_path):
    path = tmp_path / "t.trace"
    await record(path, secrets=False)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    assert [r["kind"] for r in read_trace(str(path))] == ["header", "frame", "frame", "raw", "conn"]


async def test_a_live_trace_is_followed_record_by_record_as_it_is_written(tmp_path):
    path = tmp_path / "t.trace"
    follower = TraceFollower(str(path))
    assert follower.new_records() == []  # no proxy yet
    await record(path, secrets=False)
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # the last record is still being written
    assert [r["kind"] for r in follower.new_records()] == ["header", "frame", "frame", "raw", "conn"]
    assert follower.new_records() == []
    with open(path, "ab") as f:
        f.write(data[-3:])
    assert [r["kind"] for r in follower.new_records()] == ["exit"]


def test_other_files_are_not_traces(tmp_path):
    other = tmp_path / "capture.jsonl"
    other.write_text('{"kind": "msg"}\n')
    with pytest.raises(TraceFormatError, match="not an hsmproxy trace"):
        list(read_trace(str(other)))


# --- what a trace may keep: raw only when provably secret-free ------------------------------------

FUTURE_SECRET = bytes(range(0x40, 0x60))
CLIENT = ConnContext(conn_id=4, role="client", peer_id=bytes.fromhex("02" + "ab" * 32), dbid=7, permissions=1)


def future_secret_request(cut: int = 0) -> bytes:
    body = wire.encode(wire.build("hsmd_check_future_secret", n=5, commitment_secret=FUTURE_SECRET))
    return body[: len(body) - cut]


def bad_request(embedded: bytes) -> bytes:
    return wire.encode(wire.build("hsmstatus_client_bad_request", id=CLIENT.peer_id,
                                  description="client does not have capability to run 22", msg=embedded))


def test_the_header_says_how_frames_were_recorded(tmp_path):
    for options, frames in [({}, "redacted"), ({"parsed": False}, "types-and-lengths"),
                            ({"secrets": True}, "raw"), ({"secrets": True, "parsed": False}, "raw")]:
        path = tmp_path / f"{frames}.trace"
        TraceHook(str(path), **options).close()
        (header,) = read_trace(str(path))
        assert header["frames"] == frames and header["version"] == 2


async def test_without_parsing_only_types_and_lengths_are_recorded(tmp_path):
    path = tmp_path / "t.trace"
    hook = TraceHook(str(path), parsed=False)
    ex = derive_secret_exchange()
    ex.request = None  # what a relay that does not decode hands its hooks
    await hook.on_request(ex, REQUEST_BEFORE)
    ex.reply = None
    await hook.on_reply(ex, REPLY_BEFORE)
    await hook.on_status(MASTER, b"\x00", None)
    hook.close()
    _, request, reply, status = read_trace(str(path))
    assert (request["raw"], request["type"], request["len"]) == (None, 27, len(ex.request_raw))
    assert (reply["raw"], reply["type"], reply["len"], reply["redacted"]) == (None, 127, 34, True)
    assert (status["type"], status["len"]) == (None, 1)
    assert "msg" not in reply
    assert SECRET not in path.read_bytes()


async def test_a_frame_that_does_not_decode_keeps_only_type_and_length(tmp_path):
    path = tmp_path / "t.trace"
    hook = TraceHook(str(path))
    cut = future_secret_request(cut=1)
    await hook.on_request(Exchange(conn=CLIENT, seq=0, request_raw=cut, request=None), REQUEST_BEFORE)
    hook.close()
    _, request = read_trace(str(path))
    assert (request["raw"], request["type"], request["len"]) == (None, 22, len(cut))
    assert FUTURE_SECRET[:16] not in path.read_bytes()


async def test_a_refused_request_on_the_status_socket_is_decoded_and_redacted(tmp_path):
    path = tmp_path / "t.trace"
    hook = TraceHook(str(path))
    request = future_secret_request()
    await hook.on_request(Exchange(conn=CLIENT, seq=0, request_raw=request, request=wire.decode(request)),
                          REQUEST_BEFORE)
    status = bad_request(request)
    await hook.on_status(CLIENT, status, wire.decode(status))
    undecodable = bad_request(future_secret_request(cut=1))
    await hook.on_status(CLIENT, undecodable, wire.decode(undecodable))
    clean = bad_request(wire.encode(wire.build("hsmd_get_per_commitment_point", n=3)))
    await hook.on_status(CLIENT, clean, wire.decode(clean))
    hook.close()
    _, req, refused, refused_cut, refused_clean = read_trace(str(path))
    assert FUTURE_SECRET[:16] not in path.read_bytes()
    assert refused["raw"] is None and refused["redacted"]
    assert refused["msg"]["fields"]["msg"] == {"type": 22, "name": "hsmd_check_future_secret", "len": 42,
                                               "fields": {"n": 5, "commitment_secret": wire.REDACTED}}
    assert refused["embedded_digest"] == req["digest"] != refused["digest"]  # chaos matches them this way
    assert refused_cut["raw"] is None and refused_cut["msg"]["fields"]["msg"] == {"type": 22, "len": 41,
                                                                                 "undecodable": True}
    assert refused_clean["raw"] == clean  # holds no secret: kept as it came


async def test_digests_compare_within_one_trace_only(tmp_path):
    digests = []
    for name in ("a", "b"):
        hook = TraceHook(str(tmp_path / name))
        await hook.on_request(derive_secret_exchange(), REQUEST_BEFORE)
        await hook.on_request(derive_secret_exchange(), REQUEST_BEFORE)
        hook.close()
        digests.append([r["digest"] for r in read_trace(str(tmp_path / name)) if r["kind"] == "frame"])
    (a1, a2), (b1, _) = digests
    assert a1 == a2 and a1 != b1 and len(a1) == 16


# --- real `hsmproxy wrap` runs: the signer's secrets never reach the trace -------------------------

def _secret_values(body_hex: str) -> list[bytes]:
    """The secret field values of a message body (as bytes), for grepping a trace file."""
    try:
        msg = wire.decode(bytes.fromhex(body_hex))
    except (ValueError, wire.DecodeError):
        return []
    found = [msg.fields[name] for name in msg.secret_fields if msg.fields.get(name) is not None]
    if msg.spec is not None and msg.spec.has_tlvs:
        tlv = msg.spec.tlv
        found += [value for key, value in (msg.fields.get("tlvs") or {}).items() if tlv.by_name[key].secret]
    out = []
    for value in found:
        out.append(value.encode() if isinstance(value, str) else bytes(value))
    return [v for v in out if len(v) >= 8]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("session", ["main", "passphrase_ok"])
def test_wrap_no_parse_trace_holds_none_of_the_signers_secrets(tmp_path, session):
    signer = h.hsmd_like_script(tmp_path)
    trace = tmp_path / "session.trace"
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, signer, "--no-parse", "--trace", str(trace)))], tmp_path)
    try:
        records = h.capture_session(session)
        h.replay(ld, records)
        ld.close_master()
        ld.read_status_until_eof()
        assert ld.wait() == 2
    finally:
        ld.close()
    secrets = [v for r in records if r["kind"] == "msg" for v in _secret_values(r["hex"])]
    secrets += [bytes.fromhex(x)[2:] for _, what, x in ld.transcript if what == "reply" and x[:4] in ("007f", "0064")]
    assert secrets, "the session must carry secrets for this test to mean anything"
    blob = trace.read_bytes()
    for secret in secrets:
        assert secret not in blob, secret.hex()
    found = list(read_trace(str(trace)))
    assert found[0]["frames"] == "types-and-lengths" and found[0]["secrets"] is False
    frames = [r for r in found if r["kind"] == "frame"]
    assert frames and all(r["raw"] is None and "msg" not in r for r in frames)
    assert {r["type"] for r in frames} >= {11}  # hsmd_init: its passphrase is gone, its type is kept


@pytest.mark.timeout(60)
def test_wrap_trace_redacts_the_request_hsmd_refused(tmp_path):
    """A client without the permission sends hsmd_check_future_secret (which carries a secret);
    hsmd refuses it on fd 0 with the whole request in hsmstatus_client_bad_request. Another
    sends it cut short: the embedded request does not decode. Neither reaches the trace, nor
    `hsmproxy decode` of it."""
    signer = h.hsmd_like_script(tmp_path)
    trace = tmp_path / "session.trace"
    ld = h.Lightningd([str(h.wrapper_script(tmp_path, signer, "--trace", str(trace)))], tmp_path)
    node = CLIENT.peer_id
    try:
        assert ld.request("master", bytes.fromhex(h.capture_session("main")[2]["hex"])) is not None
        for name, permissions, body in [("ecdh-only", 1, future_secret_request()),
                                        ("allowed", 8, future_secret_request(cut=1))]:
            hsmfd = wire.build("hsmd_client_hsmfd", id=node, dbid=0, permissions=permissions)
            ld.client_hsmfd(name, wire.encode(hsmfd))
            assert ld.request(name, body) is None  # refused: no reply, the client is closed
        ld.close_master()
        ld.read_status_until_eof()
        assert ld.wait() == 2
    finally:
        ld.close()
    assert FUTURE_SECRET[:8] not in trace.read_bytes()
    refused = [r for r in read_trace(str(trace)) if r["kind"] == "frame" and r["dir"] == "status"
               and (r.get("msg") or {}).get("name") == "hsmstatus_client_bad_request"]
    assert [r["msg"]["fields"]["msg"].get("name") for r in refused] == ["hsmd_check_future_secret", None]
    assert refused[0]["msg"]["fields"]["msg"]["fields"]["commitment_secret"] == wire.REDACTED
    assert refused[1]["msg"]["fields"]["msg"] == {"type": 22, "len": 41, "undecodable": True}

    def decode(*args):
        return subprocess.run([sys.executable, "-m", "hsmproxy.cli", "decode", str(trace), *args],
                              capture_output=True, text=True, timeout=60, env=h.child_env())

    tree, as_json = decode(), decode("--json")
    assert tree.returncode == as_json.returncode == 0, tree.stderr + as_json.stderr
    for out in (tree.stdout, as_json.stdout):
        assert FUTURE_SECRET[:8].hex() not in out
    assert "commitment_secret: <redacted>" in tree.stdout
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    shown = [line["fields"]["msg"] for line in lines if line.get("name") == "hsmstatus_client_bad_request"]
    assert shown[0]["fields"]["commitment_secret"] == "<redacted>" and shown[1]["undecodable"] is True
    assert FUTURE_SECRET[:8].hex() not in decode("--json", "--show-secrets").stdout  # the trace never had it
