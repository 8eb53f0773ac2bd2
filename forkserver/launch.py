"""Run one ``hsmproxy`` command in a forked copy of this process instead of a new interpreter.

An interpreter start with our imports costs 0.2-0.4 s of CPU (more with PYTHONDONTWRITEBYTECODE,
which makes every start compile); a chaos run starts three such processes per incarnation. A
process that descends from the fork server (``forkserver.server``) has every module imported
already and an entry point registered (``register_entry``): there, ``fork_script`` forks, and the
child sets up what exec would have given it (its fds and nothing else, its environment, working
directory, session, signal dispositions, command line, a fresh ``random`` state) and runs the
command's ``main``. Everywhere else ``fork_script`` returns None and the caller execs as before.

Only scripts written by ``write_script`` are forked: they carry the exact command line they exec
in a marker line, and are forked only when that command line starts this very interpreter on our
CLI module (so the child runs the code an exec would have run). A lone ``--version`` still goes
through the shell, which may answer it itself.

Known difference from exec: the child keeps this process's hash seed (PYTHONHASHSEED), and
``/proc/PID/environ`` shows the fork server's environment (``os.environ`` is the child's own).
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import gc
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

CLI_MODULE = "hsmproxy.cli"
MARKER = "# hsmproxy-exec-argv: "  # followed by the JSON list the script's exec line runs
MAX_SCRIPT_BYTES = 1 << 16

_entry: Callable[[list[str]], int] | None = None


def register_entry(main: Callable[[list[str]], int]) -> None:
    """Make ``fork_script`` fork in this process and its descendants: ``main(args)`` runs a command."""
    global _entry
    _entry = main


def cli_prefix() -> list[str]:
    """How an exec runs our CLI: this interpreter, our CLI module."""
    return [sys.executable, "-m", CLI_MODULE]


def write_script(path: Path, argv: Sequence[str], comment: str, version: str | None = None) -> None:
    """A ``#!/bin/sh`` script that execs ``argv "$@"``; with ``version``, it answers a lone
    ``--version`` with that text itself."""
    lines = ["#!/bin/sh", f"# {comment}", MARKER + json.dumps(list(argv))]
    if version is not None:
        lines.append(f'if [ "$#" -eq 1 ] && [ "$1" = "--version" ]; then printf %s {shlex.quote(version)}; exit 0; fi')
    lines.append(f'exec {shlex.join(argv)} "$@"')
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o700)


def forkable_args(argv: Sequence[str]) -> list[str] | None:
    """The CLI arguments to run in a fork instead of exec'ing ``argv`` (a script and its
    arguments); None when this process cannot (no entry point) or the script is not ours."""
    if _entry is None or not argv or list(argv[1:]) == ["--version"]:
        return None  # a version check is the script's to answer (write_script's version)
    try:
        with open(argv[0], "rb") as f:
            text = f.read(MAX_SCRIPT_BYTES).decode()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("#!/bin/sh\n"):
        return None
    for line in text.splitlines():
        if line.startswith(MARKER):
            exec_argv = json.loads(line[len(MARKER):])
            prefix = cli_prefix()
            if exec_argv[: len(prefix)] != prefix:
                return None  # another interpreter or checkout: only exec runs its code
            return [*exec_argv[len(prefix):], *argv[1:]]
    return None


class ForkedProcess:
    """A child started by ``fork_script`` or the fork server: ``subprocess.Popen``'s interface
    as far as our callers use it (``returncode`` is -N after death by signal N)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def _reaped(self, status: int) -> int:
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reaped(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        if timeout is not None:
            pidfd = os.pidfd_open(self.pid)
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                if not poller.poll(max(0, int(timeout * 1000))):
                    raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            finally:
                os.close(pidfd)
        return self._reaped(os.waitpid(self.pid, 0)[1])

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def fork_script(argv: Sequence[str], fds: Mapping[int, int], *, cwd: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None) -> ForkedProcess | None:
    """Run the script ``argv`` (written by ``write_script``) in a forked child whose fds are
    ``fds`` (child fd -> our fd; fds 1 and 2 are inherited unless given) and nothing else; None
    when it has to be exec'd instead. Call it before any ``trio.run`` in this process."""
    args = forkable_args(argv)
    if args is None:
        return None
    layout = {1: 1, 2: 2, **fds}
    pid = fork()
    if pid == 0:
        run_child(args, layout, cwd=cwd, env=env, new_session=False)
    return ForkedProcess(pid)


# --- fork itself ---

_CLONE_PARENT = 0x00008000
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
_libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held across the call, as os.fork holds it


def fork(*, sibling: bool = False) -> int:
    """``os.fork``; with ``sibling``, a child of our parent instead of ours (Linux's CLONE_PARENT),
    so the fork server's children are its starter's: it gets their SIGCHLD and exit status."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child would write our buffered output a second time
    if not sibling:
        return os.fork()
    machine = os.uname().machine
    if machine not in _SYS_CLONE:
        raise OSError(f"the fork server needs clone(CLONE_PARENT), not wired up for {machine}; use --no-fork-server")
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    # x86_64 and aarch64: clone(flags, stack, parent_tid, child_tid, tls); stack 0 = fork's semantics
    pid = _libc.syscall(ctypes.c_long(_SYS_CLONE[machine]), ctypes.c_ulong(_CLONE_PARENT | signal.SIGCHLD),
                        None, None, None, None)
    if pid == 0:
        api.PyOS_AfterFork_Child()  # what os.fork does: thread state, locks, at-fork hooks (random's reseed)
        return 0
    errno = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(errno, f"clone(CLONE_PARENT): {os.strerror(errno)}")
    return pid


# --- the child's side ---


def _install_fds(layout: Mapping[int, int]) -> None:
    """Child fd -> source fd, every other fd closed (what exec with close_fds gives)."""
    top = max([*layout, *layout.values(), 2]) + 1
    high = {target: fcntl.fcntl(source, fcntl.F_DUPFD, top) for target, source in layout.items()}
    for target, source in high.items():
        os.dup2(source, target)
    start = 0
    for fd in sorted(layout):
        if start < fd:  # closerange(0, 0) would close everything (close_range(0, -1))
            os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))  # the copies above, and everything we inherited


def _reset_signals() -> None:
    """Dispositions as after exec + interpreter start: handled -> default, ignored stays ignored."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            handler = signal.getsignal(signum)
        except ValueError:
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(signum, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def set_command_line(argv: Sequence[str]) -> None:
    """What ``ps`` and /proc/PID/cmdline show: the command line an exec would have had, written
    over this process's original arguments (cut to the room they left)."""
    try:
        fields = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
    except (OSError, IndexError, ValueError):
        return
    room = end - start
    text = b"\0".join(a.encode(errors="replace") for a in argv)[: room - 1]
    ctypes.memmove(start, text + b"\0" * (room - len(text)), room)


def run_child(args: list[str], layout: Mapping[int, int], *, cwd, env, new_session: bool) -> None:
    """In a freshly forked child: become ``hsmproxy ARGS`` and exit with its status. Never returns."""
    code = 1
    try:
        gc.freeze()  # the parent's objects are never collected here: none of them closes an fd we now use
        _install_fds(layout)
        if new_session:
            os.setsid()
        if cwd is not None:
            os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        _reset_signals()
        atexit._clear()  # the parent's exit handlers are not ours
        argv = [*cli_prefix(), *args]
        set_command_line(argv)
        sys.argv = [CLI_MODULE, *args]
        try:
            code = _entry(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - what the interpreter would print before exiting 1
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF if isinstance(code, int) else 1)
