"""TOML configuration: every option of a command, flags win, clear errors for bad keys."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hsmproxy import config
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsmproxy serve")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--wal-dir")
    parser.add_argument("--guard", action="store_true")
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--mode", choices=("a", "b"), default="a")
    parser.add_argument("--faults", action="append")
    return parser


def test_file_values_become_defaults_and_flags_override(tmp_path):
    path = tmp_path / "hsmproxy.toml"
    path.write_text(
        'wal-dir = "/var/lib/hsmproxy"\nguard = true\n'
        '[serve]\nlisten = "unix:/tmp/a"\ndelay_ms = 5\nfaults = ["-hsmd_init"]\n'
        '[wrap]\nguard = false\n'
    )
    parser = _parser()
    config.apply(parser, config.load(path, "serve"), str(path))
    args = parser.parse_args(["--delay-ms", "7"])
    assert args.listen == "unix:/tmp/a" and args.wal_dir == "/var/lib/hsmproxy"
    assert args.guard is True and args.delay_ms == 7 and args.faults == ["-hsmd_init"]


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('wal_dirr = "/x"\n')
    with pytest.raises(config.ConfigError, match=r"c.toml: hsmproxy serve has no option 'wal_dirr'; did you mean 'wal-dir'"):
        config.apply(_parser(), config.load(path, "serve"), str(path))


@pytest.mark.parametrize(
    "text,message",
    [
        ("guard = 1\n", "must be true or false"),
        ('delay-ms = "soon"\n', "invalid literal"),
        ('mode = "c"\n', "must be one of a, b"),
        ("listen = [1, 2]\n", "single value"),
        ("listen = \n", "not valid TOML"),
    ],
)
def test_bad_values_are_named(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.apply(_parser(), config.load(path, "serve"), str(path))


def test_config_through_the_real_cli(tmp_path):
    path = tmp_path / "top.toml"
    path.write_text('[top]\ncontrol = "127.0.0.1:1"\nonce = true\n')
    result = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "top", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "127.0.0.1:1" in result.stderr
    path.write_text("[top]\nonce = true\nintervall = 3\n")
    result = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "top", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "did you mean 'interval'" in result.stderr
    assert "Traceback" not in result.stderr
