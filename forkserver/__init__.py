"""Start our own CLI's processes by fork instead of exec: a pre-imported fork server for chaos runs.

``launch.py``: forking a copy of this (already imported) process that runs one ``hsmproxy``
command with the fd layout, environment, working directory and session an exec would give it;
``ForkedProcess``, a ``subprocess.Popen``-like handle on it; the scripts that name the command.
``server.py``: the fork server (a process that imported everything once and forks on request,
its children being children of whoever started it) and its client. No imports of ours: the
simulated node, the proxy's wrapper and the chaos runner all use it.
"""
