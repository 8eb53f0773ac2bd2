"""The man-in-the-middle between lightningd and its signer.

- ``core/``: sans-IO. The relay core (framing per connection, request/reply pairing, what a
  verdict means), the hook contract, shadow state transitions and the commitment digest.
- ``trio/``: the shells that do the IO the core decides: wrapper mode, socket mode, fd passing,
  subdaemon processes, the WAL files, the HTTP server and its addresses.
- ``addons/``: hooks the application plugs into the shells: shadow + WAL, fault injection,
  metrics, the trace, the control API.

Arrows: ``addons -> trio -> core``; ``core`` imports only ``wire`` and ``faults``.
"""
