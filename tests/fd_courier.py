"""A stand-in signer that hands its fd 0 and fd 3 to the test (SCM_RIGHTS over the Unix socket
named by $HSMPROXY_TEST_COURIER), so the test itself plays the signer behind a real wrapper.
It then waits for one line from the test, an exit status, and exits with it."""

import array
import os
import socket
import sys


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        print("fd-courier")
        return 0
    courier = socket.socket(socket.AF_UNIX)
    courier.connect(os.environ["HSMPROXY_TEST_COURIER"])
    courier.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 3]))])
    os.close(0)
    os.close(3)
    line = b""
    while not line.endswith(b"\n"):
        data = courier.recv(16)
        if not data:
            return 0
        line += data
    return int(line)


if __name__ == "__main__":
    sys.exit(main())
