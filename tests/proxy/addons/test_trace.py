"""The trace hook: 0600 files, secrets redacted unless asked, readable after a crash."""

import os

import pytest

import wire
from proxy.core.hooks import REPLY_BEFORE, REQUEST_BEFORE, ConnContext, Drop, Exchange
from proxy.addons.trace import TraceFormatError, TraceHook, read_trace

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


def test_other_files_are_not_traces(tmp_path):
    other = tmp_path / "capture.jsonl"
    other.write_text('{"kind": "msg"}\n')
    with pytest.raises(TraceFormatError, match="not an hsmproxy trace"):
        list(read_trace(str(other)))
