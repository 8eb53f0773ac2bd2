"""`hsmproxy state`: the shadow of every channel and the divergence events, from a WAL directory.

Reads without writing, so it works on the WAL of a running proxy as well as a dead one. A
damaged WAL is shown as far as it can be replayed, with a warning saying what could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from proxy.core.shadow import shadow_jsonable
from proxy.core.wal_format import NO_SNAPSHOT, Damage, WalError
from proxy.trio.shadow_recovery import recover

EXIT_DAMAGED = 1  # the state was shown, but records that verify could not be replayed
EXIT_UNUSABLE = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show the shadow channel state and the divergence events recorded in a WAL directory "
        "(the --wal-dir of `hsmproxy wrap`/`serve`). Safe on a running proxy: nothing is written. "
        f"Exit status 0; {EXIT_DAMAGED} when the WAL is damaged (what can be replayed is shown, a warning "
        f"on stderr and `wal.damage` in --json say what could not be); {EXIT_UNUSABLE} when it cannot be read."
    )
    parser.add_argument("--wal-dir", required=True, metavar="DIR", help="the proxy's --wal-dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--peer", metavar="HEX", help="only channels (and events) of this peer node id (a prefix is enough)")


def run(args: argparse.Namespace) -> int:
    try:
        shadow, recovery = recover(args.wal_dir, repair=False)
    except WalError as exc:
        print(f"hsmproxy state: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    for note in recovery.notes:
        print(f"hsmproxy state: warning: {note}", file=sys.stderr)
    for damage in recovery.damage:
        print(f"hsmproxy state: WAL DAMAGED: {_damage_line(damage)}", file=sys.stderr)
    state = shadow_jsonable(shadow, wal_dir=args.wal_dir, recovery=recovery)
    if args.peer:
        prefix = args.peer.lower()
        state["channels"] = [c for c in state["channels"] if c["peer_id"].startswith(prefix)]
        state["divergences"] = [d for d in state["divergences"] if d["peer_id"].startswith(prefix)]
    if args.json:
        json.dump(state, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_tables(state)
    return EXIT_DAMAGED if recovery.damage else 0


def _damage_line(damage: Damage) -> str:
    shown = ("none of them is shown" if damage.kind == NO_SNAPSHOT
             else f"the state shown stops before record {damage.index} of {damage.file}")
    return (f"{damage.describe()}; {shown}. A proxy refuses to start on this directory; "
            "`--wal-repair` makes it start anyway, moving the damaged file aside (never deleting it)")


def _short(hex_or_none: str | None, n: int = 12) -> str:
    return "-" if hex_or_none is None else hex_or_none[:n] + ("…" if len(hex_or_none) > n else "")


def _num(value) -> str:
    return "-" if value is None else str(value)


def _when(ns: int | None) -> str:
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


def _print_tables(state: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    wal = state.get("wal", {})
    console.print(f"WAL {state['wal_dir']}: epoch {wal.get('epoch')}, {wal.get('records')} record(s) after the snapshot")
    if wal.get("invalid_tail"):
        console.print(f"[yellow]invalid tail ({wal['invalid_tail_bytes']} bytes): {wal['invalid_tail']} "
                      "(a running proxy may be mid-write; a dead one cuts it on its next start)[/yellow]")
    for damage in wal.get("damage", []):
        console.print(f"[red]DAMAGED: {escape(damage['description'])}[/red]", highlight=False)

    channels = Table(title=f"Channels ({len(state['channels'])})")
    for col in ("peer", "dbid", "next counterparty commit", "next counterparty revoke", "next holder commit",
                "latest signed digest", "last request", "requests"):
        channels.add_column(col, justify="right" if col in ("dbid", "requests") or col.startswith("next") else "left")
    for ch in state["channels"]:
        channels.add_row(_short(ch["peer_id"], 16), str(ch["dbid"]), _num(ch["next_counterparty_commit_num"]),
                         _num(ch["next_counterparty_revoke_num"]), _num(ch["next_holder_commit_num"]),
                         _short(ch["current_counterparty_digest"]),
                         f"{ch['last_request_kind'] or '-'} {_num(ch['last_request_index'])}", str(ch["requests"]))
    console.print(channels)

    events = Table(title=f"Divergence events ({len(state['divergences'])})")
    for col in ("time (UTC)", "kind", "status", "peer", "dbid", "index", "shadow digest", "request digest", "detail"):
        events.add_column(col)
    for ev in state["divergences"]:
        style = "red" if ev["kind"] == "double_signed" and ev["status"] == "confirmed" else None
        events.add_row(_when(ev["time_ns"]), ev["kind"], ev["status"], _short(ev["peer_id"], 16), str(ev["dbid"]),
                       str(ev["index"]), _short(ev["shadow_digest"]), _short(ev["request_digest"]), ev["detail"],
                       style=style)
    console.print(events)
    doubtful = state["in_doubt"] + state["in_flight"]
    if doubtful:
        table = Table(title="Sent to the signer, answer not recorded (in flight, or in doubt after a stop)")
        for col in ("kind", "peer", "dbid", "index", "digest"):
            table.add_column(col)
        for it in doubtful:
            table.add_row(it["kind"], _short(it["peer_id"], 16), str(it["dbid"]), str(it["index"]), _short(it["digest"]))
        console.print(table)
