"""`hsmproxy wrap` in front of the simulated signer, started the way lightningd starts hsmd (the
lightningd side is ``tests.ld_harness``), and the capture's channel played through it."""

from __future__ import annotations

import sys
from pathlib import Path

from tests import ld_harness as h

# The capture's channel life up to the first revocation, without the messages the simulated
# signer does not implement (check_pubkey, ecdh, gossip clients).
CHANNEL_LIFE = {1, 3, 33, 36, 39, 41, 43, 47, 51, 55, 59, 63, 65, 67, 68, 72, 83, 87, 91, 95, 99, 103}
PERMISSIVE = "policy-*:warn"  # signs whatever it is asked, as stock hsmd does


def start(tmp_path: Path, policy: str, *options: str) -> h.Lightningd:
    """`hsmproxy wrap OPTIONS` with `hsmproxy sim-signer` (its policy filter ``policy``) behind it."""
    cwd = tmp_path / "hsmd"
    cwd.mkdir(exist_ok=True)
    records = h.capture_session("main")
    (cwd / "hsm_secret").write_bytes(bytes.fromhex(records[0]["hsm_secret_hex"]))
    signer = h.write_script(tmp_path / "sim-signer", [
        f'HSMPROXY_SIM_POLICY_FILTER="{policy}" exec "{sys.executable}" -m hsmproxy.cli sim-signer "$@"'])
    wrapper = h.wrapper_script(tmp_path, signer, *options)
    return h.Lightningd([str(wrapper)], cwd)


def open_channel(ld: h.Lightningd) -> None:
    h.replay(ld, [r for r in h.capture_session("main") if r["seq"] in CHANNEL_LIFE])
    assert all(what != "eof" for _, what, _ in ld.transcript), ld.transcript


def finish(ld: h.Lightningd) -> None:
    ld.close_master()
    ld.read_status_until_eof()
    assert ld.wait() == 2  # the signer's exit code for a closed master, passed through
