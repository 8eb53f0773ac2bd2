"""``hsmproxy faults``: the command-line client of a running proxy's control API.

Also checks a plan offline (``hsmproxy faults check PLAN``), with no proxy needed.
Exit status: 0 done, 1 the proxy refused or the plan is invalid, 2 usage, 3 cannot reach the proxy.
"""

from __future__ import annotations

import json
import os
import sys

from faults.plan import PlanError, load_plan
from hsmproxy.control_client import ControlClient, ControlError
from hsmproxy.control_token import TokenError, resolve_token
from proxy.trio.addresses import AddressError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_CONTROL = "127.0.0.1:8475"


def configure(parser) -> None:
    parser.add_argument(
        "--control",
        metavar="ADDR",
        default=os.environ.get("HSMPROXY_CONTROL", DEFAULT_CONTROL),
        help=f"the proxy's control address: HOST:PORT, unix:PATH or any form --control takes (default: $HSMPROXY_CONTROL or {DEFAULT_CONTROL})",
    )
    parser.add_argument("--token", help="bearer token; every user can read a command line, so prefer "
                        "--token-file or $HSMPROXY_CONTROL_TOKEN (used when neither option is given)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="read the bearer token from FILE (not readable by group or others: chmod 600)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("health", help="is the proxy up, are faults enabled, seed and trace hash")
    sub.add_parser("list", help="list the fault rules")
    # Rules often start with '-' (dev-disconnect's "close before sending"), so this subparser
    # takes no options at all: every word is a rule.
    add = sub.add_parser(
        "add",
        help="add rules in the one-line form, e.g. '-hsmd_sign_remote_commitment_tx*2'",
        add_help=False,
        prefix_chars="\0",
    )
    add.add_argument("rules", nargs="+", metavar="RULE", help="one-line rules (see docs/faults.md)")
    remove = sub.add_parser("remove", help="remove a rule by name")
    remove.add_argument("name")
    sub.add_parser("clear", help="remove every rule")
    sub.add_parser("enable", help="switch the rules on")
    sub.add_parser("disable", help="switch the rules off (they stay installed)")
    sub.add_parser("held", help="list messages held by hold rules")
    release = sub.add_parser("release", help="release a held message (all of them without an ID)")
    release.add_argument("id", nargs="?", type=int)
    events = sub.add_parser("events", help="the latest injected faults")
    events.add_argument("--limit", type=int, default=50)
    sub.add_parser("trace", help="seed and fault-trace hash")
    check = sub.add_parser("check", help="validate a plan (TOML file or one-line rules) without a proxy")
    check.add_argument("plan")


def run(args) -> int:
    if args.action == "check":
        return _check(args)
    if args.action == "add" and args.rules[0] in ("-h", "--help"):
        print("usage: hsmproxy faults add RULE [RULE ...]\n\nRULE is the one-line form, e.g. "
              "'-hsmd_sign_remote_commitment_tx*2' or '!hsmd_sign_remote_commitment_tx*3 dbid=7'; "
              "see docs/faults.md for every prefix and option.")
        return EXIT_OK
    try:
        token = resolve_token(args.token, args.token_file, token_option="--token", file_option="--token-file")
        client = ControlClient(args.control, token=token, timeout=args.timeout)
    except (AddressError, TokenError) as exc:
        print(f"hsmproxy faults: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = _call(client, args)
    except ControlError as exc:
        print(f"hsmproxy faults {args.action}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if exc.status == 0 else EXIT_REFUSED
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _show(args.action, data)
    return EXIT_OK


def _call(client, args) -> dict:
    a = args.action
    if a == "health":
        return client.health()
    if a == "list":
        return client.request("GET", "/faults/rules")
    if a == "add":
        return client.request("POST", "/faults/rules", {"line": ";".join(args.rules)})
    if a == "remove":
        return client.request("DELETE", f"/faults/rules/{args.name}")
    if a == "clear":
        return client.request("DELETE", "/faults/rules")
    if a in ("enable", "disable"):
        return client.request("POST", f"/faults/{a}")
    if a == "held":
        return client.request("GET", "/faults/held")
    if a == "release":
        return client.request("POST", "/faults/release", {} if args.id is None else {"id": args.id})
    if a == "events":
        return client.events(args.limit)
    return client.trace()


def _rules_table(rules: list[dict], title: str):
    from rich.table import Table

    table = Table(title=title)
    for col in ("name", "action", "point", "messages", "match", "nth", "count", "p"):
        table.add_column(col, overflow="fold")
    for r in rules:
        match = [f"{k}={r[k]}" for k in ("role", "connection", "dbid", "peer") if r.get(k) is not None] + r.get("where", [])
        messages = r["messages"]
        shown = ", ".join(messages[:3]) + (f" (+{len(messages) - 3})" if len(messages) > 3 else "") if messages else "any"
        extra = {"delay": f" {r.get('ms')}±{r.get('jitter_ms')}ms", "corrupt": f" {r.get('mode')}"}.get(r["action"], "")
        table.add_row(r["name"], r["action"] + extra, r["point"], shown, " ".join(match), str(r["nth"]),
                      "all" if r["count"] is None else str(r["count"]), str(r["probability"]))
    return table


def _show(action: str, data: dict) -> None:
    from rich.console import Console

    console = Console()
    if action == "list":
        state = "on" if data["enabled"] else "off (disabled)"
        console.print(_rules_table(data["rules"], f"fault rules: {len(data['rules'])}, {state}"))
    elif action == "add":
        console.print(_rules_table(data["added"], "added"))
    elif action == "held":
        if not data["held"]:
            console.print("no held messages")
        for h in data["held"]:
            console.print(f"[bold]{h['id']}[/]  {h['message']} on {h['connection']} seq {h['seq']} at {h['point']} (rule {h['rule']})")
    elif action == "events":
        console.print(f"{data['total']} faults injected; latest {len(data['events'])}:")
        for e in data["events"]:
            console.print(f"  {e['rule']}: {e['action']} {e['message']} on {e['connection']} seq {e['seq']} at {e['point']} {e['detail']}")
    elif action in ("health", "trace"):
        for k, v in data.items():
            console.print(f"{k}: {v}")
    else:
        console.print(json.dumps(data))


def _check(args) -> int:
    from rich.console import Console

    try:
        plan = load_plan(args.plan)
    except PlanError as exc:
        print(f"hsmproxy faults check: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    rules = [r.to_json() for r in plan.rules]
    if args.json:
        print(json.dumps({"seed": plan.seed, "rules": rules}, indent=2))
    else:
        seed = f", seed {plan.seed}" if plan.seed is not None else ""
        Console().print(_rules_table(rules, f"plan OK: {len(rules)} rule(s){seed}"))
    return EXIT_OK
