"""The control token kept off the command line (issue 12, item 10): from a private file or the
environment, for `serve`/`wrap` and for the `faults` and `top` clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hsmproxy.control_token import ENV_VAR, TokenError, read_token_file, resolve_token
from tests import ld_harness as h

pytestmark = pytest.mark.timeout(60)
TOKEN = "t0ken-" + "ab" * 16


def token_file(tmp_path: Path, mode: int = 0o600, text: str = TOKEN + "\n") -> Path:
    path = tmp_path / "control.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_private_file_gives_the_token(tmp_path):
    assert read_token_file(str(token_file(tmp_path))) == TOKEN


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_file_others_may_read_or_change_is_refused(tmp_path, mode):
    path = token_file(tmp_path, mode)
    with pytest.raises(TokenError) as refused:
        read_token_file(str(path))
    assert f"--control-token-file {path}: mode 0{mode:o} lets other users read or change it" in str(refused.value)
    assert f"chmod 600 {path}" in str(refused.value)


def test_unusable_token_files_are_named(tmp_path):
    with pytest.raises(TokenError, match="the file is empty"):
        read_token_file(str(token_file(tmp_path, text="\n")))
    with pytest.raises(TokenError, match="cannot read it"):
        read_token_file(str(tmp_path / "missing"))
    with pytest.raises(TokenError, match="not a regular file"):
        read_token_file(str(tmp_path))
    link = tmp_path / "link"
    link.symlink_to(token_file(tmp_path))
    with pytest.raises(TokenError, match="cannot read it"):  # a link may point anywhere: not followed
        read_token_file(str(link))


def test_where_the_token_comes_from(tmp_path):
    path = str(token_file(tmp_path))
    env = {ENV_VAR: "from-env"}
    assert resolve_token(None, None, environ=env) == "from-env"
    assert resolve_token("flag", None, environ=env) == "flag"
    assert resolve_token(None, path, environ=env) == TOKEN
    assert resolve_token(None, None, environ={}) is None
    with pytest.raises(TokenError, match="both give a token; keep one"):
        resolve_token("flag", path, environ=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hsmproxy.cli", *args], capture_output=True, text=True,
                          env=h.child_env(env), timeout=30)


async def test_serve_takes_the_token_from_a_file_or_the_environment_and_clients_too(tmp_path):
    path = token_file(tmp_path)
    for source, extra, env in [("file", ["--control-token-file", str(path)], {}), ("env", [], {ENV_VAR: TOKEN})]:
        port = _free_port()
        control = f"127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "hsmproxy.cli", "serve", "--listen",
                                 f"unix:{tmp_path / f'{source}.sock'}", "--connect", f"unix:{tmp_path / 'signer.sock'}",
                                 "--control", control, *extra],
                                env=h.child_env(env), stderr=subprocess.PIPE, text=True)
        try:
            with trio.fail_after(20):
                while _cli("faults", "--control", control, "--token", TOKEN, "health").returncode == 3:
                    assert proc.poll() is None, proc.stderr.read()
                    await trio.sleep(0.05)
            assert TOKEN not in Path(f"/proc/{proc.pid}/cmdline").read_text()
            refused = _cli("faults", "--control", control, "health", env={ENV_VAR: ""})
            assert refused.returncode == 1 and "token" in refused.stderr
            by_file = _cli("faults", "--control", control, "--token-file", str(path), "health")
            by_env = _cli("faults", "--control", control, "health", env={ENV_VAR: TOKEN})
            assert by_file.returncode == by_env.returncode == 0, by_file.stderr + by_env.stderr
            top = _cli("top", "--once", "--control", control, "--token-file", str(path))
            assert top.returncode == 0 and "hsmproxy top" in top.stdout, top.stderr
            top_env = _cli("top", "--once", "--control", control, env={ENV_VAR: TOKEN})
            assert top_env.returncode == 0, top_env.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0


def test_a_token_file_others_can_read_stops_serve_and_the_clients(tmp_path):
    path = token_file(tmp_path, 0o644)
    done = _cli("serve", "--listen", f"unix:{tmp_path / 'p.sock'}", "--connect", "unix:/x",
                "--control", "127.0.0.1:0", "--control-token-file", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--control-token-file {path}: mode 0644 lets other users read or change it" in done.stderr
    assert not (tmp_path / "p.sock").exists()
    for client in (["faults", "--token-file", str(path), "health"], ["top", "--once", "--token-file", str(path)]):
        done = _cli(*client)
        assert done.returncode == 2 and "--token-file" in done.stderr and "chmod 600" in done.stderr


def test_help_says_where_the_token_may_come_from():
    for command, options in [("serve", ["--control-token-file", ENV_VAR]), ("wrap", ["--control-token-file", ENV_VAR]),
                             ("faults", ["--token-file", ENV_VAR]), ("top", ["--token-file", ENV_VAR])]:
        text = " ".join(_cli(command, "--help").stdout.split())
        assert all(option in text for option in options), command


def test_the_signer_wrap_starts_does_not_inherit_the_token(tmp_path):
    signer = h.hsmd_like_script(tmp_path)
    seen = tmp_path / "signer.env"
    spy = h.write_script(tmp_path / "spy-signer", [f'env > "{seen}"', f'exec "{signer}" "$@"'])
    wrapper = h.wrapper_script(tmp_path, spy, "--control", f"unix:{tmp_path / 'control.sock'}")
    ld = h.Lightningd([str(wrapper)], tmp_path, env={ENV_VAR: TOKEN})
    try:
        assert ld.request("master", bytes.fromhex(h.capture_session("main")[2]["hex"])) is not None
        ld.close_master()
        ld.read_status_until_eof()
        ld.wait()
    finally:
        ld.close()
    assert "PATH=" in seen.read_text() and TOKEN not in seen.read_text()
    assert os.environ.get(ENV_VAR) != TOKEN  # the harness passed it to the wrapper only
