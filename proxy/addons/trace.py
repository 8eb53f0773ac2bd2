"""Trace recording: a msgpack stream of every frame and event the relay sees.

Each record is a map. The first is ``{"kind": "header", "format": "hsmproxy-trace", "version": 2,
"secrets": bool, "frames": str, "t": ns}``; ``frames`` says how frame bodies were recorded:

* ``raw``: every body as it came (``--trace-secrets``: the trace holds secrets);
* ``redacted``: a body is kept only when it decoded and provably holds no secret
  (``wire.holds_no_secret``); any other is its decoded view with the secrets left out, or, when
  it did not decode, its type and length only;
* ``types-and-lengths``: the relay did not decode (``--no-parse``), so nothing can be told apart
  from a secret: every body is its type and length only.

Then one of:

* ``frame``: ``t`` (wall-clock ns), ``mono`` (monotonic ns), ``conn`` (context map), ``dir``
  (``request`` node->signer, ``reply`` signer->node, ``status`` fd 0), ``seq`` (request number on
  the connection; -1 for a reply nobody asked for), ``verdict`` (what the hooks decided at
  ``before_forward``), ``len`` (body bytes), ``digest`` (see below), and the body in one of three
  forms: ``raw`` (the body); ``raw: None, redacted: True, msg`` (``wire.to_jsonable``: a message
  embedded whole, hsmd's refused request in ``hsmstatus_client_bad_request``, is decoded and
  redacted the same way, and its own digest is ``embedded_digest``); or ``raw: None, redacted:
  True, type`` (the u16 type, None for a body too short for one) with no ``msg``. A request
  or reply longer than the relay holds (``proxy.core.relay.WHOLE_FRAME_LIMIT``) is recorded by
  its first ``WHOLE_FRAME_LIMIT`` body bytes (body, message and ``digest`` are those of that
  prefix), ``len`` is its whole length and ``tail`` the bytes after the prefix (trailing
  bytes, relayed as they arrived). A status frame that long has the last form whatever
  ``frames`` says, with ``unparsed: True`` and no ``digest``.
* ``raw``: bytes that are not frames (``dir``, ``raw``): fd carriers and everything after a
  connection lost its framing. Unframed bytes cannot be checked for secrets, so without
  ``--trace-secrets`` only their length is kept (1-byte fd carriers are kept).
* ``conn``: ``event`` opened / closed / replaced / framing_lost, with the context; a client
  connection's ``parent_id`` says on which connection its fd was passed.
* ``exit``: the signer's exit ``status``.
* ``fault`` / ``divergence``: an injected fault or a shadow-state divergence event (``event``).

``digest`` is a keyed hash (BLAKE2b, 16 bytes) of the body under a key drawn at random for each
trace and never written: equal bodies in one trace have equal digests (chaos matches a refused
request to the request this way), but a digest cannot be checked against a guess, so it says
nothing about a secret, even a weak passphrase.

The file is created 0600. ``read_trace(path)`` yields the records back.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Iterator

import msgpack

import wire

from proxy.core.hooks import REPLY_BEFORE, REQUEST_BEFORE, ConnContext, Exchange, UnparsedFrame

FORMAT = "hsmproxy-trace"
VERSION = 2  # 2: frames recorded raw only when provably secret-free; "frames", "len", "digest"

FRAMES_RAW = "raw"
FRAMES_REDACTED = "redacted"
FRAMES_TYPES_AND_LENGTHS = "types-and-lengths"
DIGEST_SIZE = 16


class TraceFormatError(ValueError):
    """The file is not an hsmproxy trace."""


def context_record(ctx: ConnContext) -> dict:
    return {
        "conn_id": ctx.conn_id,
        "role": ctx.role,
        "peer_id": ctx.peer_id,
        "dbid": ctx.dbid,
        "permissions": ctx.permissions,
        "parent_id": ctx.parent_id,
    }


class TraceHook:
    """A relay hook that appends every frame and event to a trace file. Register it last, so
    the verdict it records is the one the other hooks decided."""

    observer = True  # a trace that cannot be written (a full disk) must not take the node's signer away
    points = (REQUEST_BEFORE, REPLY_BEFORE)  # it records each frame once, with its verdict

    def __init__(self, path: str, *, secrets: bool = False, parsed: bool = True):
        """``parsed``: whether the relay decodes messages (not with ``--no-parse``). Without
        decoding a body cannot be told apart from a secret, so only its type and length are
        recorded, unless ``secrets`` asks for everything."""
        self.path = path
        self.secrets = secrets
        self.frames = FRAMES_RAW if secrets else FRAMES_REDACTED if parsed else FRAMES_TYPES_AND_LENGTHS
        self._digest_key = os.urandom(32)  # never written: digests only compare within this trace
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_TRUNC
        self._file = os.fdopen(fd, "wb")
        self._packer = msgpack.Packer(use_bin_type=True)
        self._write({"kind": "header", "format": FORMAT, "version": VERSION, "secrets": secrets,
                     "frames": self.frames, "t": time.time_ns()})

    def _write(self, record: dict) -> None:
        # One write per record, flushed: a trace must survive the proxy being killed.
        self._file.write(self._packer.pack(record))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _digest(self, body: bytes) -> bytes:
        return hashlib.blake2b(body, key=self._digest_key, digest_size=DIGEST_SIZE).digest()

    def _frame(self, ctx: ConnContext, direction: str, seq: int | None, raw: bytes, msg, verdict,
               tail: int = 0) -> None:
        record = {
            "kind": "frame",
            "t": time.time_ns(),
            "mono": time.monotonic_ns(),
            "conn": context_record(ctx),
            "dir": direction,
            "seq": seq,
            "raw": raw,
            "verdict": type(verdict).__name__ if verdict is not None else "Forward",
            "len": len(raw) + tail,
            "digest": self._digest(raw),
        }
        if tail:
            record["tail"] = tail
        if msg is not None and msg.embedded_field is not None:
            # whatever form each one takes, a refused request matches its request by digest
            record["embedded_digest"] = self._digest(bytes(msg.fields[msg.embedded_field]))
        if self.frames == FRAMES_RAW:
            pass
        elif self.frames == FRAMES_REDACTED and msg is not None:
            if not wire.holds_no_secret(msg):
                record["raw"] = None
                record["redacted"] = True
                record["msg"] = wire.to_jsonable(msg)
        else:  # not decoded (--no-parse), or it did not decode: nothing may be kept but its size
            record["raw"] = None
            record["redacted"] = True
            record["type"] = int.from_bytes(raw[:2], "big") if len(raw) >= 2 else None
        self._write(record)

    async def on_request(self, ex: Exchange, point: str) -> None:
        if point == REQUEST_BEFORE:
            self._frame(ex.conn, "request", ex.seq, ex.request_raw, ex.request, ex.verdict, ex.request_tail)

    async def on_reply(self, ex: Exchange, point: str) -> None:
        if point == REPLY_BEFORE:
            self._frame(ex.conn, "reply", ex.seq, ex.reply_raw, ex.reply, ex.verdict, ex.reply_tail)

    async def on_status(self, conn: ConnContext, raw: bytes, msg) -> None:
        self._frame(conn, "status", None, raw, msg, None)

    async def on_unparsed(self, frame: UnparsedFrame) -> None:
        """A long status frame's type and length: the relay never held it whole."""
        self._write({"kind": "frame", "t": time.time_ns(), "mono": time.monotonic_ns(), "conn": context_record(frame.conn),
                     "dir": frame.direction, "seq": frame.seq, "raw": None, "verdict": "Forward", "len": frame.length,
                     "redacted": True, "type": frame.type, "unparsed": True})

    async def on_raw(self, conn: ConnContext, direction: str, raw: bytes) -> None:
        record = {"kind": "raw", "t": time.time_ns(), "conn": context_record(conn), "dir": direction}
        if self.secrets or len(raw) == 1:
            record["raw"] = raw
        else:
            record["raw"] = None
            record["len"] = len(raw)
            record["redacted"] = True
        self._write(record)

    async def on_connection(self, conn: ConnContext, event: str) -> None:
        self._write({"kind": "conn", "t": time.time_ns(), "event": event, "conn": context_record(conn)})

    async def on_signer_exit(self, status: int) -> None:
        self._write({"kind": "exit", "t": time.time_ns(), "status": status})

    def fault(self, event) -> None:
        """Record an injected fault (a ``faults.engine.FaultEvent``), before it is carried out: a
        fault that kills the node or the proxy is still in the trace."""
        self._write({"kind": "fault", "t": time.time_ns(), "event": event.to_json()})

    def divergence(self, event) -> None:
        """Record a shadow-state divergence event (``hsmproxy decode`` shows it as an event)."""
        self._write({"kind": "divergence", "t": time.time_ns(), "event": event.to_jsonable()})


def read_trace(path: str) -> Iterator[dict]:
    """The records of a trace file, header first. A trace cut short by a crash yields every
    complete record."""
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False)
        first = True
        try:
            for record in unpacker:
                if first:
                    if not isinstance(record, dict) or record.get("format") != FORMAT:
                        raise TraceFormatError(f"{path} is not an hsmproxy trace (no trace header)")
                    first = False
                yield record
        except (msgpack.exceptions.ExtraData, ValueError) as exc:
            if isinstance(exc, TraceFormatError):
                raise
            raise TraceFormatError(f"{path}: corrupt trace record after {'the header' if not first else 'start'}: {exc}")
        if first:
            raise TraceFormatError(f"{path} is empty: not an hsmproxy trace")


class TraceFollower:
    """The records a trace gains while its proxy writes it, call by call (a record cut short at the
    end waits for its rest). For watching a live run; ``read_trace`` reads a finished file."""

    def __init__(self, path: str):
        self.path = path
        self._offset = 0
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def new_records(self) -> list:
        """The complete records written since the last call ([] while the file does not exist)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        self._unpacker.feed(data)
        try:
            return list(self._unpacker)
        except (msgpack.exceptions.ExtraData, ValueError) as exc:
            raise TraceFormatError(f"{self.path}: corrupt trace record: {exc}") from None


def is_trace(path: str) -> bool:
    """Whether ``path`` starts with a trace header (cheap check for ``hsmproxy decode``)."""
    try:
        return next(iter(read_trace(path)))["format"] == FORMAT
    except (OSError, TraceFormatError, StopIteration):
        return False
