"""A test signer that behaves like lightning_hsmd on its sockets (lightning_hsmd is not available here).

Start it with lightningd's layout (fd 0 status socket, fd 3 request socket). It answers from the
real hsmd captures in tests/vectors (a request seen there gets the reply hsmd gave), and follows
hsmd's documented behaviour (reference hsmd-protocol.md Part B) for the rest:

* ``--version`` prints a version line and exits 0; the first status message is ``status_version``;
* ``hsmd_dev_preinit`` (99) gets no reply and is accepted only with ``--developer``;
* ``hsmd_client_hsmfd`` (9): reply 109, then a new socket passed with SCM_RIGHTS on a 1-byte
  carrier in a separate sendmsg; a new client for a nonzero dbid closes the old one;
* a bad request on a client (unknown type, reply type, no permission, no answer known): a
  ``status_log`` broken line and ``hsmstatus_client_bad_request`` on fd 0, that client closed;
* a bad request on the master: ``status_fail`` MASTER_IO "Error parsing ..." and exit 242;
* the master closed, or an oversize length on it: exit 2.

One extension for tests, off unless ``--nested-clients``: a client holding HSM_PERM_MASTER may
ask for clients of its own, so fd passing can be tested two levels deep.
Single-threaded and serving every connection concurrently, like hsmd.

It deliberately imports nothing of hsmproxy (not even ``wire``'s framer): it is the other side
of the conversation, written from hsmd's behaviour, so the proxy's code is tested against an
independent implementation rather than against itself. (Run as a script from tests/, it could
not import ``wire`` anyway: ``tests/wire/`` would shadow it.)
"""

from __future__ import annotations

import array
import json
import os
import selectors
import socket
import struct
import sys
from pathlib import Path

VERSION = "v26.06-258-g090f4b0"
CAPTURE = Path(__file__).parent / "vectors" / "hsmd-capture.jsonl"
MAX_BODY_LEN = (1 << 27) - 1
EXIT_MASTER_BAD = 242
EXIT_MASTER_GONE = 2

PERM_MASTER = 1024
# request type -> permission bit (hsmd/permissions.h; everything else needs MASTER)
PERMISSION_OF = {1: 1, 2: 2, 3: 2, 6: 2, 12: 4, 13: 4, 14: 4, 18: 8, 22: 8, 31: 8, 19: 16, 20: 16, 35: 16, 40: 16,
                 36: 16, 21: 32, 26: 64, 29: 128, 32: 256, 37: 256}
MASTER_PERMISSIONS = 1027
LOG_BROKEN = 4
FAIL_MASTER_IO = 0


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def wirestring(text: str) -> bytes:
    return text.encode() + b"\x00"


def load_replies(path: Path) -> dict[tuple, bytes]:
    """(scope, request body) -> reply body, from every request/reply pair in the capture. The
    scope is "master" or the client's dbid: per-channel requests depend on the bound channel."""
    replies: dict[tuple, bytes] = {}
    pending: dict[tuple[str, str], bytes] = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") != "msg" or rec["conn"] == "status":
                continue
            key = (rec["session"], rec["conn"])
            body = bytes.fromhex(rec["hex"])
            if rec["dir"] == "node->signer":
                pending[key] = body
            elif key in pending:
                scope = "master" if rec["conn"] == "master" else int(rec["conn"].split(":")[1].split("/")[0])
                replies.setdefault((scope, pending.pop(key)), body)
    return replies


class Conn:
    def __init__(self, sock: socket.socket, *, master: bool, node_id: bytes, dbid: int, permissions: int):
        self.sock = sock
        self.master = master
        self.node_id = node_id
        self.dbid = dbid
        self.permissions = permissions
        self.buf = bytearray()


class HsmdLike:
    def __init__(self, developer: bool, nested: bool):
        self.developer = developer
        self.nested = nested
        self.replies = load_replies(CAPTURE)
        self.sel = selectors.DefaultSelector()
        self.status = socket.socket(fileno=0)
        self.status.setblocking(True)
        self.initialized = False
        self.clients_by_dbid: dict[int, Conn] = {}
        master = socket.socket(fileno=3)
        self.register(Conn(master, master=True, node_id=bytes(33), dbid=0, permissions=MASTER_PERMISSIONS))

    def register(self, conn: Conn) -> None:
        conn.sock.setblocking(True)
        self.sel.register(conn.sock, selectors.EVENT_READ, conn)

    def close(self, conn: Conn) -> None:
        self.sel.unregister(conn.sock)
        conn.sock.close()
        if self.clients_by_dbid.get(conn.dbid) is conn:
            del self.clients_by_dbid[conn.dbid]

    def send_status(self, body: bytes) -> None:
        self.status.sendall(frame(body))

    def run(self) -> int:
        self.send_status(b"\xff\xf6" + wirestring(VERSION))
        while True:
            for key, _ in self.sel.select():
                conn = key.data
                data = conn.sock.recv(65536)
                if not data:
                    if conn.master:
                        return EXIT_MASTER_GONE
                    self.close(conn)
                    continue
                conn.buf += data
                exit_code = self.serve(conn)
                if exit_code is not None:
                    return exit_code

    def serve(self, conn: Conn) -> int | None:
        while len(conn.buf) >= 4:
            (length,) = struct.unpack_from(">I", conn.buf)
            if length > MAX_BODY_LEN:
                if conn.master:
                    return EXIT_MASTER_GONE
                self.close(conn)
                return None
            if len(conn.buf) < 4 + length:
                return None
            body = bytes(conn.buf[4 : 4 + length])
            del conn.buf[: 4 + length]
            problem = self.handle(conn, body)
            if problem is None:
                continue
            if conn.master:
                self.send_status(b"\xff\xf0" + bytes([LOG_BROKEN, 0]) + wirestring(problem))
                kind = struct.unpack(">H", body[:2])[0] if len(body) >= 2 else 0xFFFFFFFF
                desc = f"Error parsing {kind}: {body.hex()}"
                self.send_status(b"\xff\xf2" + bytes([FAIL_MASTER_IO]) + wirestring(desc))
                return EXIT_MASTER_BAD
            self.send_status(b"\xff\xf0" + bytes([LOG_BROKEN, 0]) + wirestring(problem))
            self.send_status(
                struct.pack(">H", 1000) + conn.node_id + wirestring(problem) + struct.pack(">H", len(body)) + body
            )
            self.close(conn)
            return None
        return None

    def handle(self, conn: Conn, body: bytes) -> str | None:
        """Answer one request; a description of the problem when it is a bad request."""
        kind = struct.unpack(">H", body[:2])[0] if len(body) >= 2 else -1
        if conn.master and not self.initialized:
            if kind == 99 and self.developer:
                return None  # dev_preinit: no reply
            if kind != 11:
                return "hsmd was not initialized correctly"
        needed = PERMISSION_OF.get(kind, PERM_MASTER)
        if kind < 0 or not conn.permissions & needed:
            return f"client does not have capability to run {kind}"
        if kind == 9 and (conn.master or self.nested):
            return self.pass_client(conn, body)
        reply = self.replies.get(("master" if conn.master else conn.dbid, body))
        if reply is None:
            return f"Error parsing {kind}: {body.hex()}"
        if kind == 11:
            self.initialized = True
        conn.sock.sendall(frame(reply))
        return None

    def pass_client(self, conn: Conn, body: bytes) -> str | None:
        if len(body) != 2 + 33 + 8 + 8:
            return f"Error parsing 9: {body.hex()}"
        node_id = body[2:35]
        dbid, permissions = struct.unpack(">QQ", body[35:51])
        ours, theirs = socket.socketpair()
        old = self.clients_by_dbid.get(dbid) if dbid else None
        if old is not None:
            self.close(old)
        client = Conn(ours, master=False, node_id=node_id, dbid=dbid, permissions=permissions)
        self.register(client)
        if dbid:
            self.clients_by_dbid[dbid] = client
        conn.sock.sendall(frame(b"\x00\x6d"))
        conn.sock.sendmsg([b"\x00"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
        theirs.close()
        return None


def main(argv: list[str]) -> int:
    if argv == ["--version"]:
        print(VERSION)
        return 0
    known = {"--developer", "--log-io", "--log-trace", "--dev-debug-self", "--nested-clients"}
    unknown = [a for a in argv if a not in known]
    if unknown:
        print(f"hsmd_like: unknown arguments {unknown}", file=sys.stderr)
        return 1
    os.set_blocking(0, True)
    return HsmdLike(developer="--developer" in argv, nested="--nested-clients" in argv).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
