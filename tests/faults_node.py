"""A lightningd stand-in for the fault tests: a process of its own, so kill-node can kill it.

    python tests/faults_node.py DIR TIMEOUT -- PROGRAM [ARGS...]

Starts PROGRAM (the wrapper) with hsmd's fd layout, sends hsmd_init on the master, gets a
channeld client fd, then sends the captured channeld requests one by one as lightningd would.
Prints one JSON line per step (flushed at once), then what arrived on the status socket and
PROGRAM's exit status. A request whose reply does not come within TIMEOUT seconds is reported as
"timeout" and the next one is sent.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

import wire
from tests import ld_harness as h  # noqa: E402
from tests.paths import CHANNELD_EXCHANGES  # noqa: E402

EXCHANGES = json.loads(CHANNELD_EXCHANGES.read_text())["exchanges"]


def channeld_hsmfd_request() -> bytes:
    pending = None
    for rec in h.capture_session("main"):
        if rec["kind"] == "msg" and rec["conn"] == "master" and rec["type"] == 9:
            pending = bytes.fromhex(rec["hex"])
        if rec["kind"] == "event" and rec["event"] == "fd_received" and rec["conn"] == "client:1/channeld":
            return pending
    raise LookupError("no channeld client in the capture")


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def request(sock: socket.socket, body: bytes) -> tuple[str, str]:
    """(result, reply hex); the step's ``sent``/``answered`` times are this process's monotonic
    clock, so a test can bound a delay by cause and effect instead of by when lines reached it."""
    try:
        sock.sendall(wire.frame(body))
    except OSError:
        return "send_failed", ""
    try:
        reply = h.read_frame(sock)
    except socket.timeout:
        return "timeout", ""
    except OSError:
        return "eof", ""
    return ("eof", "") if reply is None else ("reply", reply.hex())


def main(argv: list[str]) -> int:
    directory, timeout = Path(argv[0]), float(argv[1])
    program = argv[argv.index("--") + 1 :]
    ld = h.Lightningd(program, directory)
    say(event="started", wrapper_pid=ld.proc.pid)
    try:
        init = bytes.fromhex(h.capture_session("main")[2]["hex"])
        result, reply = request(ld.master, init)
        say(step="init", result=result)
        client = ld.client_hsmfd("channeld", channeld_hsmfd_request())
        client.settimeout(timeout)
        for i, ex in enumerate(EXCHANGES):
            sent = time.monotonic()
            result, reply = request(client, bytes.fromhex(ex["request"]))
            say(step=i, name=ex["name"], result=result, hex=reply, sent=sent, answered=time.monotonic())
        # A duplicated reply may still be in flight: collect what else arrives.
        extra = []
        client.settimeout(min(timeout, 0.15))
        while True:
            try:
                frame = h.read_frame(client)
            except OSError:
                break
            if frame is None:
                break
            extra.append(frame.hex())
        say(extra=extra)
        ld.close_master()
        ld.status.settimeout(timeout * 3)
        try:
            ld.read_status_until_eof()
        except OSError:
            pass
        say(status=[f.hex() for f in ld.status_frames()], exit=ld.wait())
    finally:
        ld.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
