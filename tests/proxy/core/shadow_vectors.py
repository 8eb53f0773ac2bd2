"""Real channel messages from the hsmd capture, for the shadow's tests (one channel, dbid 1)."""

from __future__ import annotations

import json
from functools import lru_cache

import wire
from tests.paths import CAPTURE

CAPTURE = CAPTURE
PEER = bytes.fromhex("02a8a0e038d286080374")  # prefix; the full id is read from the capture


@lru_cache(maxsize=1)
def channel_messages() -> dict:
    """The first request of each kind and index on client:1, plus the master's hsmfd request."""
    found: dict = {}
    for line in CAPTURE.read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] != "msg" or rec["session"] != "main" or rec["dir"] != "node->signer":
            continue
        if rec["conn"] == "master" and rec["name"] == "hsmd_client_hsmfd":
            msg = wire.decode(bytes.fromhex(rec["hex"]))
            if msg.fields["dbid"] == 1:
                found.setdefault("peer_id", msg.fields["id"])
            continue
        if not rec["conn"].startswith("client:1"):
            continue
        try:
            msg = wire.decode(bytes.fromhex(rec["hex"]))
        except wire.DecodeError:
            continue
        index = msg.fields.get("commit_num", msg.fields.get("revoke_num", msg.fields.get("n")))
        found.setdefault((msg.name, index), msg)
    return found


def request(name: str, index: int, **changes) -> "wire.Message":
    """A real request from the capture, optionally with fields changed, through encode/decode."""
    base = channel_messages()[(name, index)]
    fields = dict(base.fields)
    fields.update(changes)
    return wire.decode(wire.encode(wire.build(name, **fields)))


def peer_id() -> bytes:
    return channel_messages()["peer_id"]
