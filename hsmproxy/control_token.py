"""Where the control API's bearer token comes from, for the proxy and its clients alike.

A token on the command line is readable by every user of the machine (``/proc/PID/cmdline``,
``ps``), so there are two other sources: a file only its owner can read (``--control-token-file``
for ``wrap``/``serve``, ``--token-file`` for ``faults``/``top``) and the environment variable
``HSMPROXY_CONTROL_TOKEN`` (``/proc/PID/environ`` is readable by the same user only). An option
given explicitly wins over the environment; the command line and a file at once are refused.
"""

from __future__ import annotations

import os
import stat

ENV_VAR = "HSMPROXY_CONTROL_TOKEN"
MAX_TOKEN_FILE = 4096  # a token, not a document: a bigger file is the wrong file


class TokenError(ValueError):
    """A token source that cannot be used; the message names it and says what to do."""


def read_token_file(path: str, option: str = "--control-token-file") -> str:
    """The token in ``path`` (surrounding whitespace, e.g. the final newline, dropped).

    Refused: a file that is not a regular file, that its group or other users may read or write
    (a token they can read is theirs too), or that holds no token.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise TokenError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenError(f"{option} {path}: not a regular file; put the token alone in a file")
        if info.st_mode & 0o077:
            raise TokenError(f"{option} {path}: mode {stat.S_IMODE(info.st_mode):04o} lets other users read or "
                             f"change it; make it private with `chmod 600 {path}`")
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise TokenError(f"{option} {path}: more than {MAX_TOKEN_FILE} bytes; the file must hold the token alone")
    try:
        token = data.decode().strip()
    except UnicodeDecodeError:
        raise TokenError(f"{option} {path}: not text; the file must hold the token alone") from None
    if not token:
        raise TokenError(f"{option} {path}: the file is empty; write the token in it")
    return token


def resolve_token(token: str | None, token_file: str | None, *, token_option: str = "--control-token",
                  file_option: str = "--control-token-file", environ=os.environ) -> str | None:
    """The token from the option, else the file, else ``$HSMPROXY_CONTROL_TOKEN``; None if none
    is set. Both the option and a file given is a :class:`TokenError`: which one is meant?"""
    if token and token_file:
        raise TokenError(f"{token_option} and {file_option} both give a token; keep one ({file_option} "
                         "keeps it off the command line, which every user can read)")
    if token_file:
        return read_token_file(token_file, file_option)
    if token:
        return token
    return environ.get(ENV_VAR) or None
