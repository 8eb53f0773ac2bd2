"""One TOML file for every option of a command; flags given on the command line still win.

Keys are the commands' long option names (``wal-dir`` or ``wal_dir``). Top-level keys apply to
whichever command reads the file; a table named after a command (``[wrap]``, ``[serve]``,
``[chaos]``) applies to that command only and overrides the top level. A key that the command
does not have is an error naming the file, the key and the closest option; so is any other
table (``[faults] enabled = true`` is not an option: ``enable-faults = true`` is).
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
from pathlib import Path

# The commands that read --config (hsmproxy.cli.CONFIGURABLE): each may have a table of its own.
COMMANDS_WITH_TABLES = ("wrap", "serve", "chaos", "top", "sim-node", "sim-signer")


class ConfigError(ValueError):
    pass


def load(path: str | Path, command: str) -> dict:
    """The settings in ``path`` that apply to ``command`` (top level merged with its table)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    settings = _dotted({k: v for k, v in data.items() if not (isinstance(v, dict) and k in COMMANDS_WITH_TABLES)})
    table = data.get(command, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{command}] must be a table")
    settings.update(_dotted(table))
    return settings


def _dotted(table: dict, prefix: str = "") -> dict:
    """Other tables become dotted keys (``faults.enabled``), so they are checked like any key."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def apply(parser: argparse.ArgumentParser, settings: dict, source: str) -> None:
    """Make ``settings`` the parser's defaults, so explicit flags still override them."""
    by_option = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                by_option[option[2:]] = action
    defaults = {}
    for key, value in settings.items():
        option = key.replace("_", "-")
        action = by_option.get(option)
        if action is None or option in ("help", "config"):
            raise ConfigError(f"{source}: {parser.prog} has no option {key!r}{_did_you_mean(option, by_option)}")
        defaults[action.dest] = _convert(action, value, f"{source}: {key}")
        action.required = False  # the file supplies it
    parser.set_defaults(**defaults)


def _did_you_mean(option: str, options) -> str:
    # A dotted key may name the option in either order: faults.enabled -> enable-faults.
    parts = option.split(".")
    candidates = {option, "-".join(parts), "-".join(reversed(parts))}
    scored = [(difflib.SequenceMatcher(None, c, o).ratio(), o) for c in candidates for o in options]
    score, best = max(scored, default=(0.0, ""))
    return f"; did you mean {best!r}?" if score >= 0.6 else ""


def _convert(action: argparse.Action, value, where: str):
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        values = value if isinstance(value, list) else [value]
        return [_scalar(action, v, where) for v in values]
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where} must be a single value")
    return _scalar(action, value, where)


def _scalar(action: argparse.Action, value, where: str):
    if action.type is not None and not isinstance(value, bool):
        try:
            value = action.type(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, action.choices))}")
    return value
