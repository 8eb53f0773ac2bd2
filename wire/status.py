"""Status-socket messages (hsmd's fd 0), as in Core Lightning's common/status_wire.csv.

status_version is written by common/status.c rather than declared in that CSV; its layout
is the same wirestring.
"""

from .schema import field, message

status_log = message(
    "status_log",
    0xFFF0,
    field("level", "enum log_level"),
    field("peer", "?node_id"),
    field("entry", "wirestring"),
)

status_io = message(
    "status_io",
    0xFFF1,
    field("iodir", "enum log_level"),
    field("peer", "?node_id"),
    field("who", "wirestring"),
    field("data", "u8", count="len", secret=True),  # logged traffic: it may be anything
)

status_fail = message(
    "status_fail",
    0xFFF2,
    field("failreason", "enum status_failreason"),
    field("desc", "wirestring"),
)

status_peer_connection_lost = message("status_peer_connection_lost", 0xFFF3)

status_peer_billboard = message(
    "status_peer_billboard",
    0xFFF5,
    field("perm", "bool"),
    field("happenings", "wirestring"),
)

status_version = message(
    "status_version",
    0xFFF6,
    field("version", "wirestring"),
)
