"""The channel model shared by node and peer: updates conserve value, bad updates are refused,
and a side's proposals stay valid however long the other side defers them (what the wal
discipline does to the peer's updates after a reconnect)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.channel_state import ChannelState, Update, UpdateRejected, preimage_for, propose
from sim.crypto import sha256

CAPACITY_MSAT = 1_000_000_000


def total(s: ChannelState) -> int:
    return s.to_node_msat + s.to_peer_msat + sum(h.amount_msat for h in s.htlcs)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), defer=st.lists(st.booleans(), min_size=30, max_size=30))
def test_deferred_peer_updates_stay_valid_and_value_is_conserved(seed, defer):
    state = ChannelState(600_000_000, 400_000_000)
    pending: list[Update] = []
    for k, hold_back in enumerate(defer, start=1):
        pending += propose(seed, False, f"round{k}", state, pending, 500 + k)
        included = [] if hold_back else pending  # the node may commit without the peer's latest updates
        state = state.apply(included)
        for u in propose(seed, True, f"round{k}", state, [], 500 + k):
            state = state.apply([u])
        pending = [u for u in pending if u not in included]
        assert total(state) == CAPACITY_MSAT


def test_bad_updates_are_refused_with_the_update_named():
    state = ChannelState(600_000_000, 400_000_000)
    add = Update("add", "r-1", False, 5_000_000, sha256(preimage_for(1, "r-1")).hex(), 510)
    state = state.apply([add])
    with pytest.raises(UpdateRejected, match="r-1"):
        state.apply([Update("fulfill", "r-1", True, preimage="00" * 32)])  # wrong preimage
    with pytest.raises(UpdateRejected, match="r-1"):
        state.apply([Update("fulfill", "r-1", False, preimage=preimage_for(1, "r-1").hex())])  # the offerer cannot fulfil
    with pytest.raises(UpdateRejected, match="r-2"):
        state.apply([Update("add", "r-2", False, 395_000_000, "00" * 32, 510)])  # below the reserve
    paid = state.apply([Update("fulfill", "r-1", True, preimage=preimage_for(1, "r-1").hex())])
    assert paid.to_node_msat == 605_000_000 and not paid.htlcs
