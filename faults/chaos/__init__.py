"""Chaos sessions: node, proxy and signer as real processes, faults on a schedule, invariants checked.

Sans-IO parts (scenarios, schedules, evidence, invariants, outcomes, reports, campaign plumbing)
are plain functions; ``runner`` is the trio shell that starts, kills and restarts processes.
"""
