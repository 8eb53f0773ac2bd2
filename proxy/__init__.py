"""The man-in-the-middle: trio shells, relay core, shadow state, WAL, metrics, control API, CLI."""
