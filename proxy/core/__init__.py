"""Sans-IO: bytes and events in, decisions out. Nothing here touches a socket, a clock or a file."""
