"""Crash sweeps against real Core Lightning: every hsmd request of the commitment dance, on both
nodes, at each of the four points of an exchange, with lightningd killed there and restarted
(``hsmproxy chaos --lightningd PATH``; docs/cln.md, "Crash sweeps").

points   crash points, their fault rules and the MESSAGE@POINT:NODE syntax (sans-IO)
traces   the channel's requests and the fired fault, from a proxy's trace (sans-IO)
judge    what must hold after a cycle, from plain data (sans-IO)
network  bitcoind, two lightningd nodes (pyln-testing) with their hsmd behind the proxy, a channel
sweep    warm-up, then one crash cycle per crash point
result   one cycle's result and what Core Lightning did, for the reports (chaos/report.py)
"""
