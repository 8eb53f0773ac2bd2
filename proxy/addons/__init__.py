"""Hooks (``proxy/core/hooks.py``) that the application plugs into the shells: shadow + WAL,
fault injection, metrics, the trace and the control API. The shells never import them."""
