"""Chaos sessions: node, proxy and signer as real processes, faults on a schedule, evidence from
the proxy's WAL and trace and the actors' on-disk state, invariants, outcomes and reports."""
