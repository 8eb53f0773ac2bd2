"""Real Core Lightning and Bitcoin Core for the tests that need them.

Users bring their own: ``LIGHTNINGD`` / ``BITCOIND`` name the binaries, else they are looked up on
PATH. Without them (or without pyln-testing) those tests skip, saying what to install.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def binary(env: str, name: str) -> Path | None:
    given = os.environ.get(env)
    if given:
        return Path(given) if os.access(given, os.X_OK) else None
    found = shutil.which(name)
    return Path(found) if found else None


LIGHTNINGD = binary("LIGHTNINGD", "lightningd")
BITCOIND = binary("BITCOIND", "bitcoind")


def _missing() -> str | None:
    missing = []
    if LIGHTNINGD is None:
        missing.append("lightningd (Core Lightning v26.06 or newer: set LIGHTNINGD=/path/to/lightningd or put it on PATH)")
    if BITCOIND is None:
        missing.append("bitcoind (Bitcoin Core 25 or newer: set BITCOIND=/path/to/bitcoind or put it on PATH)")
    try:
        import pyln.testing  # noqa: F401
    except ImportError:
        missing.append("pyln-testing (pip install 'hsmproxy[cln]')")
    return "needs real Core Lightning: " + "; ".join(missing) if missing else None


MISSING = _missing()
needs_cln = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def cln_env() -> dict[str, str]:
    """The environment for a pyln-testing run: both binaries' directories first on PATH (pyln
    starts `lightningd` and `bitcoind` by name), regtest, and the tests' own temp root."""
    assert LIGHTNINGD is not None and BITCOIND is not None
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(LIGHTNINGD.parent), str(BITCOIND.parent), env.get("PATH", "")])
    env["TEST_NETWORK"] = "regtest"
    env.setdefault("SLOW_MACHINE", "1")  # pyln-testing's longer timeouts: 2 shared cores
    if not _has_grpc_plugin(LIGHTNINGD):
        env.setdefault("RUST", "0")  # a build without Rust has no cln-grpc: pyln must not ask for it
    return env


def _has_grpc_plugin(lightningd: Path) -> bool:
    here = lightningd.resolve().parent
    return any((d / "cln-grpc").exists() for d in (here.parent / "plugins", here.parent / "libexec" / "c-lightning" / "plugins"))
