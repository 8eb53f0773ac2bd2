"""Facts of the hsmd conversation, said once for the relay, the simulators and fault plans.

* Messages with rules of their own: ``hsmd_dev_preinit`` gets no reply; ``hsmd_client_hsmfd``
  asks for a new client connection, and its reply ``hsmd_client_hsmfd_reply`` is followed by a
  1-byte carrier holding that connection's fd (SCM_RIGHTS; CLN sends 0x00, VLS 0xff).
* Roles: the kinds of connection a message travels on.
* Points: where a relay in the middle sees a message during its round trip. Fault plans name
  them, the proxy's hooks are called at them; ``faults/`` may import only ``wire``, so they
  live here.
"""

from __future__ import annotations

from .codec import SPECS_BY_NAME

# ---- messages with rules of their own ----------------------------------------------------------

TYPE_CLIENT_HSMFD = SPECS_BY_NAME["hsmd_client_hsmfd"].type  # 9
TYPE_DEV_PREINIT = SPECS_BY_NAME["hsmd_dev_preinit"].type  # 99
TYPE_CLIENT_HSMFD_REPLY = SPECS_BY_NAME["hsmd_client_hsmfd_reply"].type  # 109
NO_REPLY_TYPES = frozenset({TYPE_DEV_PREINIT})  # hsmd answers every other request

# The first two bytes of a body are its type: comparing them is cheaper than decoding (hot
# paths compare ``body[:2]`` with these directly).
NO_REPLY_PREFIXES = frozenset(t.to_bytes(2, "big") for t in NO_REPLY_TYPES)
FD_CARRIER_PREFIX = TYPE_CLIENT_HSMFD_REPLY.to_bytes(2, "big")


def expects_reply(body: bytes) -> bool:
    """Whether hsmd answers the request ``body`` (a frame body, decoded or not)."""
    return body[:2] not in NO_REPLY_PREFIXES


def fd_carrier_follows(body: bytes) -> bool:
    """Whether the reply ``body`` is followed by a 1-byte fd carrier, when fds can be passed
    at all (a signer reached over TCP cannot pass one, and sends none)."""
    return body[:2] == FD_CARRIER_PREFIX


# ---- roles: the connections -------------------------------------------------------------------

ROLE_MASTER = "master"  # lightningd's request socket (fd 3)
ROLE_CLIENT = "client"  # a connection obtained with hsmd_client_hsmfd
ROLE_STATUS = "status"  # fd 0, signer -> node
ROLE_SOCKET = "socket"  # a connection to a signer listening on a socket (`hsmproxy serve`)
ROLES = (ROLE_MASTER, ROLE_CLIENT, ROLE_STATUS, ROLE_SOCKET)

# ---- points: where a relay sees a message, in order --------------------------------------------

REQUEST_BEFORE = "request.before_forward"  # the node sent it, the signer has not seen it
REQUEST_AFTER = "request.after_forward"  # the signer has it, the node waits
REPLY_BEFORE = "reply.before_forward"  # the signer has acted, the node does not know: the split-brain window
REPLY_AFTER = "reply.after_forward"  # the node has the reply
POINTS = (REQUEST_BEFORE, REQUEST_AFTER, REPLY_BEFORE, REPLY_AFTER)
REQUEST_POINTS = (REQUEST_BEFORE, REQUEST_AFTER)
REPLY_POINTS = (REPLY_BEFORE, REPLY_AFTER)
BEFORE_FORWARD_POINTS = (REQUEST_BEFORE, REPLY_BEFORE)  # where what is forwarded can still change
