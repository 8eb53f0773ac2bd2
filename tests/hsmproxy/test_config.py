"""TOML configuration: every option of a command, flags win, clear errors for bad keys."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hsmproxy import cli, config


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


@pytest.mark.parametrize("text", ["faults.enabled = true\n", "[faults]\nenabled = true\n", "[serve]\nfaults.enabled = true\n"])
def test_the_spelling_people_try_for_enable_faults_is_refused_with_the_one_that_works(tmp_path, text):
    """Issue 12 item 8: `faults.enabled = true` was silently ignored (a [faults] table was taken
    for the `hsmproxy faults` command, which reads no config file)."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    parser = _parser()
    parser.add_argument("--enable-faults", action="store_true")
    with pytest.raises(config.ConfigError, match=r"no option 'faults.enabled'; did you mean 'enable-faults'"):
        config.apply(parser, config.load(path, "serve"), str(path))


def test_tables_are_the_commands_that_read_a_config_file():
    assert set(config.COMMANDS_WITH_TABLES) == cli.CONFIGURABLE


def test_a_refused_rule_gives_advice_that_works(tmp_path):
    """Issue 12 item 8: the refusal told users to set `faults.enabled = true`, which did nothing."""
    plan = "$hsmd_init"
    refused = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "serve", "--listen", f"unix:{tmp_path / 'p.sock'}",
                              "--connect", "unix:/x", "--faults", plan], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "faults.enabled" not in refused.stderr
    assert "--enable-faults (or enable-faults = true in its --config file)" in refused.stderr
    path = tmp_path / "c.toml"
    path.write_text("enable-faults = true\nno-parse = true\n")  # the advice, followed
    # a non-loopback --metrics stops the run right after the fault options were accepted
    done = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "serve", "--config", str(path), "--listen",
                           f"unix:{tmp_path / 'p.sock'}", "--connect", "unix:/x", "--faults", plan,
                           "--metrics", "192.0.2.1:9464"], capture_output=True, text=True, timeout=60)
    assert "FAULT INJECTION ENABLED: seed" in done.stderr and "refused" not in done.stderr
    assert done.returncode == 2 and "--metrics 192.0.2.1:9464: serve metrics on a loopback address" in done.stderr


def test_max_unanswered_comes_from_the_file_and_a_bad_one_is_named(tmp_path, capsys):
    from hsmproxy.assembly import relay_limits
    from hsmproxy.options import add_relay_options
    from proxy.core.relay import DEFAULT_LIMITS, MAX_UNANSWERED

    parser = argparse.ArgumentParser(prog="hsmproxy serve")
    add_relay_options(parser)
    assert f"(default {MAX_UNANSWERED})" in " ".join(parser.format_help().split())
    assert relay_limits(parser.parse_args([])) is DEFAULT_LIMITS
    path = tmp_path / "c.toml"
    path.write_text("[serve]\nmax-unanswered = 8\n")
    config.apply(parser, config.load(path, "serve"), str(path))
    assert relay_limits(parser.parse_args([])).max_unanswered == 8
    with pytest.raises(SystemExit):
        relay_limits(parser.parse_args(["--max-unanswered", "0"]))
    assert "--max-unanswered 0: give at least 1" in capsys.readouterr().err
