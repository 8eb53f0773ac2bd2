"""Fault plans and the sans-IO decisions made from them; no IO, no trio (docs/faults.md).

- ``plan``: rules as data; TOML plans and the dev-disconnect-style one-line form, validated
  with did-you-mean errors;
- ``engine``: the decision engine (observation in, decisions out; seeded draws, per-connection
  counters, the fault-trace hash);
- ``corrupt``: well-formed wrong replies (forged signatures) for the ``corrupt`` action.

The proxy carries decisions out (``proxy/addons/fault_hook.py``). Nothing is imported here, so
``import faults.plan`` stays cheap.
"""
