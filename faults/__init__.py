"""Fault plans, matching and actions (sans-IO decisions), and the chaos-session runner.

Fault injection (docs/faults.md):

- ``plan``: rules as data; TOML plans and the dev-disconnect-style one-line form, validated
  with did-you-mean errors;
- ``engine``: the sans-IO decision engine (observation in, decisions out; seeded draws,
  per-connection counters, the fault-trace hash);
- ``runtime``: the live state shared by the hook and the control API (engine, held messages,
  whether faults are enabled at all);
- ``hook``: the relay hook that turns decisions into verdicts, delays, signals and crashes;
- ``control``: the HTTP/JSON server (trio + h11) with a route table others add to;
  ``api``: its fault, health and shadow endpoints; ``client``: a blocking client;
- ``setup``: the proxy options and the objects ``proxy/options.py`` builds from them.

Nothing is imported here, so ``import faults.plan`` stays cheap.
"""
