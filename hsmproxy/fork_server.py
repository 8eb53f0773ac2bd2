"""``python -m hsmproxy.fork_server --fd=N``: the chaos runner's fork server (``forkserver.server``).

Imports everything the three actors (``hsmproxy sim-node``, ``hsmproxy wrap``, ``hsmproxy
sim-signer``) import, once, without running trio; then forks one child per request, each running
``hsmproxy.cli.main`` with its own arguments. The children inherit the imports and the entry
point, so the node forks its wrapper and the wrapper its signer the same way (``forkserver.launch``).
"""

from __future__ import annotations

import gc
import socket
import sys

# The actors' modules, including those they import only when they run (after `--version`).
import trio  # noqa: F401

import hsmproxy.assembly  # noqa: F401
import hsmproxy.commands.wrap  # noqa: F401
import proxy.trio.wrapper  # noqa: F401
import sim.node_cmd  # noqa: F401
import sim.signer_core  # noqa: F401
import sim.signer_keys  # noqa: F401
import sim.signer_proc  # noqa: F401
import sim.signer_server  # noqa: F401
import sim.signer_store  # noqa: F401
import wire
from forkserver.launch import register_entry, set_command_line
from forkserver.server import serve
from hsmproxy import cli


def main(argv: list[str]) -> int:
    fds = [a.split("=", 1)[1] for a in argv if a.startswith("--fd=")]
    if len(fds) != 1 or not fds[0].isdigit():
        print("hsmproxy.fork_server: give the socket as --fd=N; the chaos runner starts this, not people",
              file=sys.stderr)
        return 2
    for spec in wire.SPECS_BY_NAME.values():
        spec.compiled  # noqa: B018 - compiled on first use: once here instead of in every child
    gc.freeze()  # what is here now stays: the children's collections skip it (and share its pages)
    register_entry(cli.main)
    set_command_line([sys.executable, "-m", "hsmproxy.fork_server", f"--fd={fds[0]}"])  # not the room left for children
    return serve(socket.socket(fileno=int(fds[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
