"""``hsmproxy decode``: a dissector for people (rich tree) and machines (``--json``).

Inputs: hex bodies or frames on the command line, hex lines on stdin (``-`` or a pipe), or a
file: a JSON-lines capture (the format of tests/vectors/) or an hsmproxy trace. A trace keeps a
frame in one of three forms (``proxy.addons.trace``): its body, its redacted decoding, or its
type and length only; each is shown for what it is, and no form shows a secret unless
``--show-secrets`` is given and the trace holds it.
A malformed message is reported where it stands and decoding goes on; the exit status is 1
if anything was malformed, 2 for unusable input (bad hex, unreadable file).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import wire
from diagrams.mermaid import to_mermaid
from diagrams.sequence import Where, critical_windows, join_windows, parse_channel, sequence_from_traces
from proxy.addons.trace import TraceFormatError, is_trace, read_trace

EXIT_OK, EXIT_MALFORMED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """Input that is not hex, a capture or a trace; the message names it and says what to do."""


@dataclass
class Item:
    """One message to show: its body and where it came from.

    A trace recorded without --trace-secrets keeps no body for frames that may hold secrets,
    only their redacted decoding or their type and length: then ``body`` is None and ``shown``
    is what was kept (``recorded`` says which). ``event`` is a line about something that is not
    a message (a connection opened, the signer exited).
    """

    body: bytes | None
    origin: str  # "argument 1", "stdin line 3", "capture.jsonl line 12"
    context: dict  # conn, dir, session... whatever the source knows
    shown: dict | None = None
    event: str | None = None


def configure(parser) -> None:
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="hex of a message body or of a whole frame, a capture file (JSON lines), a trace file, "
        "or - for hex lines on stdin (the default when stdin is a pipe)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per message, for machines")
    parser.add_argument(
        "--show-secrets", action="store_true", help="show secret values (redacted by default)"
    )
    parser.add_argument(
        "--framed", choices=("auto", "yes", "no"), default="auto",
        help="whether hex input includes the 4-byte length prefix (default: detect)",
    )
    parser.add_argument("--only", metavar="NAME", action="append", help="show only messages with this name (repeatable)")
    parser.add_argument("--full", action="store_true", help="do not shorten long byte fields in the tree")
    diagram = parser.add_argument_group(
        "sequence diagrams (--mermaid)",
        "Print the traces as one Mermaid sequenceDiagram: node, proxy (where it acts) and signer lanes; "
        "each signing request with its channel (chN: dbid N) and commitment number, replies returning, faults "
        "and divergences as notes, kills and restarts across the lanes; other messages counted in grey notes. "
        "Several traces (a chaos run's trace-0.mp trace-1.mp ...) are drawn in the order given. No secret is "
        "ever shown. To paste it on GitHub, put it in a ```mermaid block.",
    )
    diagram.add_argument("--mermaid", action="store_true", help="print a Mermaid sequence diagram of the trace files")
    diagram.add_argument(
        "--channel", metavar="ID",
        help="only this channel: its dbid (the N of chN) or the first hex digits of its peer id",
    )
    diagram.add_argument(
        "--from", dest="start", metavar="[K:]N",
        help="start at record N, the number `hsmproxy decode TRACE` prints first on each line (the header is "
        "record 1), of the K-th trace given (default: the first)",
    )
    diagram.add_argument(
        "--to", dest="end", metavar="[K:]N",
        help="end at record N (included) of the K-th trace given (default: the last)",
    )
    diagram.add_argument(
        "--all", action="store_true",
        help="draw every step. Default: only the steps around each fault and divergence (a note says what was "
        "left out), or everything when there is none; --from/--to draw everything between them",
    )


def run(args) -> int:
    if args.mermaid:
        return _mermaid(args)
    for flag, given in (("--channel", args.channel), ("--from", args.start), ("--to", args.end), ("--all", args.all)):
        if given:
            print(f"hsmproxy decode: {flag} cuts a sequence diagram: add --mermaid", file=sys.stderr)
            return EXIT_BAD_INPUT
    inputs = args.inputs or (["-"] if not sys.stdin.isatty() else [])
    if not inputs:
        print(
            "hsmproxy decode: nothing to decode: give hex, a capture or trace file, "
            "or pipe hex lines to stdin (see --help)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    total = malformed = bad_inputs = 0
    out = _JsonOut(args) if args.json else _TreeOut(args)
    for item in _items(inputs, args.framed):
        if isinstance(item, BadInput):
            bad_inputs += 1
            print(f"hsmproxy decode: {item}", file=sys.stderr)
            continue
        if item.event is not None:
            out.event(item)
            continue
        total += 1
        if item.body is None:
            if not args.only or item.shown.get("name") in args.only:
                out.shown(item, item.shown)
            continue
        try:
            message = wire.decode(item.body)
        except wire.DecodeError as exc:
            malformed += 1
            out.error(item, exc)
            continue
        if args.only and message.name not in args.only:
            continue
        out.message(item, message)
    out.close(total, malformed)
    if bad_inputs:
        return EXIT_BAD_INPUT
    return EXIT_MALFORMED if malformed else EXIT_OK


# -- sequence diagrams -------------------------------------------------------------------------

def _mermaid(args) -> int:
    def bad(message: str) -> int:
        print(f"hsmproxy decode: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT

    for flag, given in (("--json", args.json), ("--show-secrets", args.show_secrets), ("--only", args.only)):
        if given:
            return bad(f"--mermaid draws a diagram; {flag} does not apply to it (a diagram never shows secrets)")
    if not args.inputs or "-" in args.inputs:
        return bad("--mermaid needs trace files (recorded with `hsmproxy wrap --trace FILE`), e.g. "
                   "hsmproxy decode --mermaid trace-0.mp trace-1.mp")
    for value in args.inputs:
        if not Path(value).is_file():
            return bad(f"{value}: no such file; --mermaid draws trace files")
        try:
            Path(value).open("rb").close()
        except OSError as exc:
            return bad(f"{value}: cannot read ({exc.strerror})")
        if not is_trace(value):
            return bad(f"{value} is not an hsmproxy trace (no trace header); --mermaid draws traces recorded "
                       "with `hsmproxy wrap --trace FILE`")
    try:
        start = _position(args.start, "--from", 0, len(args.inputs))
        end = _position(args.end, "--to", len(args.inputs) - 1, len(args.inputs))
        channel = parse_channel(args.channel) if args.channel is not None else None
    except ValueError as exc:
        return bad(str(exc))
    try:
        seq = sequence_from_traces(args.inputs, channel=channel, start=start, end=end)
    except TraceFormatError as exc:
        return bad(f"{exc}; the trace is damaged: `hsmproxy decode FILE` shows the records before the damage")
    except OSError as exc:
        return bad(f"{exc.filename}: cannot read ({exc.strerror})")
    if not (args.all or start or end):
        windows = critical_windows(seq)
        if windows:
            seq = join_windows(seq, windows)
        else:
            print("hsmproxy decode: no fault or divergence in the trace: drawing every step "
                  "(--from/--to cut a window)", file=sys.stderr)
    sys.stdout.write(to_mermaid(seq))
    return EXIT_OK


def _position(text: str | None, flag: str, default_trace: int, traces: int) -> Where | None:
    """``[K:]N`` of --from/--to: record N of the K-th trace given (1-based)."""
    if text is None:
        return None
    trace, _, record = text.rpartition(":")
    if not record.isdigit() or int(record) < 1 or (trace and not trace.isdigit()):
        raise ValueError(f"{flag} {text!r}: give a record number N, or K:N for record N of the K-th trace given "
                         "(the numbers `hsmproxy decode TRACE` prints first on each line)")
    index = int(trace) - 1 if trace else default_trace
    if not 0 <= index < traces:
        raise ValueError(f"{flag} {text!r}: there {'is' if traces == 1 else 'are'} {traces} trace(s), K must be "
                         f"from 1 to {traces}")
    return Where(index, int(record))


# -- inputs ------------------------------------------------------------------------------------

def _items(inputs: list[str], framed: str):
    """Items to decode, and BadInput values for input that could not be read (reported, skipped)."""
    for index, value in enumerate(inputs, 1):
        try:
            if value == "-":
                yield from _hex_lines(sys.stdin, "stdin", framed)
            elif Path(value).is_file():
                yield from _file_items(Path(value), framed)
            else:
                yield from _hex_items(value, f"argument {index}", framed)
        except BadInput as exc:
            yield exc


def _hex_lines(stream, name: str, framed: str):
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                yield from _hex_items(line, f"{name} line {number}", framed)
            except BadInput as exc:
                yield exc


def _hex_items(text: str, origin: str, framed: str):
    cleaned = "".join(text.split()).removeprefix("0x")
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise BadInput(
            f"{origin}: {shown!r} is neither hex nor an existing file; give a message as hex "
            "(e.g. 00120000000000000005) or the path of a capture/trace"
        ) from None
    for number, body in enumerate(_split(raw, framed, origin)):
        yield Item(body, origin if number == 0 else f"{origin} frame {number + 1}", {})


def _split(raw: bytes, framed: str, origin: str) -> list[bytes]:
    """Bodies in ``raw``: either one body, or a sequence of whole frames."""
    if framed == "no":
        return [raw]
    reader = wire.FrameReader()
    try:
        bodies = reader.bodies(raw)
    except wire.FramingError as exc:
        if framed == "yes":
            raise BadInput(f"{origin}: {exc}") from None
        return [raw]
    if bodies and not reader.pending:
        return bodies
    if framed == "yes":
        raise BadInput(f"{origin}: not a whole number of frames ({len(reader.pending)} bytes left over)")
    return [raw]


def _file_items(path: Path, framed: str):
    try:
        head = path.open("rb").read(1)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    if head == b"{":
        yield from _capture_items(path)
        return
    trace_items = _trace_items(path)
    if trace_items is not None:
        yield from trace_items
        return
    with path.open(errors="replace") as stream:
        yield from _hex_lines(stream, str(path), framed)


def _capture_items(path: Path):
    with path.open() as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path} line {number}: not JSON ({exc.msg}); expected one JSON object per line") from None
            if record.get("kind", "msg") != "msg":
                continue
            if "hex" not in record:
                raise BadInput(f"{path} line {number}: a message record needs a 'hex' field with the body")
            try:
                body = bytes.fromhex(record["hex"])
            except ValueError:
                raise BadInput(f"{path} line {number}: 'hex' is not hex") from None
            context = {k: record[k] for k in ("seq", "session", "conn", "dir") if k in record}
            yield Item(body, f"{path.name} line {number}", context)


def _trace_items(path: Path):
    """Items of an hsmproxy trace, or None if ``path`` is not one."""
    if not is_trace(str(path)):
        return None
    return _trace_records(path)


def _trace_records(path: Path):
    for number, record in enumerate(read_trace(str(path)), 1):
        origin = f"{path.name} record {number}"
        kind = record.get("kind")
        context = {"seq": number}
        if isinstance(record.get("conn"), dict):
            context["conn"] = _describe_conn(record["conn"])
        if kind == "frame":
            context["dir"] = record.get("dir")
            if record.get("verdict", "Forward") != "Forward":
                context["verdict"] = record["verdict"]
            if record.get("tail"):  # a long frame: shown is its first 4 MiB, these bytes came after
                context["tail"] = record["tail"]
            if record.get("raw") is not None:
                yield Item(record["raw"], origin, context)
            elif isinstance(record.get("msg"), dict):
                shown = {**record["msg"], "len": record.get("len"), "recorded": RECORDED_REDACTED}
                yield Item(None, origin, context, shown=shown)
            else:
                yield Item(None, origin, context, shown=_type_and_length(record))
        elif kind == "conn":
            yield Item(None, origin, context, event=f"connection {record.get('event')}")
        elif kind == "fault":
            ev = record.get("event") or {}
            yield Item(None, origin, context, event=(
                f"fault {ev.get('action')} at {ev.get('point')} on {ev.get('message')} "
                f"({ev.get('connection')} seq {ev.get('seq')}, rule {ev.get('rule')})"
            ))
        elif kind == "divergence":
            ev = record.get("event") or {}
            yield Item(None, origin, context, event=(
                f"divergence {ev.get('kind')} ({ev.get('status')}) dbid {ev.get('dbid')} index {ev.get('index')}"
            ))
        elif kind == "exit":
            yield Item(None, origin, context, event=f"signer exited with status {record.get('status')}")
        elif kind == "raw":
            size = len(record["raw"]) if record.get("raw") is not None else record.get("len", 0)
            yield Item(None, origin, context, event=f"{size} unframed byte(s) {record.get('dir')} (fd carrier or raw relay)")


RECORDED_REDACTED = "redacted"  # decoded, secrets left out
RECORDED_TYPE_AND_LENGTH = "type-and-length"  # not decoded: nothing else could be kept


def _type_and_length(record: dict) -> dict:
    number = record.get("type")
    return {"type": number, "name": wire.type_name(number), "len": record.get("len"), "recorded": RECORDED_TYPE_AND_LENGTH}


def _describe_conn(conn: dict) -> str:
    text = f"{conn.get('role')}#{conn.get('conn_id')}"
    if conn.get("dbid") is not None:
        text += f"(dbid={conn['dbid']})"
    return text


# -- outputs -----------------------------------------------------------------------------------

class _JsonOut:
    def __init__(self, args):
        self.show_secrets = args.show_secrets

    def message(self, item: Item, message: wire.Message) -> None:
        self.shown(item, wire.to_jsonable(message, show_secrets=self.show_secrets))

    def shown(self, item: Item, rendered: dict) -> None:
        print(json.dumps({**item.context, **rendered}))

    def event(self, item: Item) -> None:
        print(json.dumps({**item.context, "event": item.event}))

    def error(self, item: Item, exc: wire.DecodeError) -> None:
        record = {
            **item.context,
            "error": exc.reason,
            "message": exc.message,
            "field": exc.field,
            "offset": exc.offset,
            "len": len(item.body),
        }
        if self.show_secrets:  # a body that does not decode may be anything
            record["hex"] = item.body.hex()
        print(json.dumps(record))

    def close(self, total: int, malformed: int) -> None:
        if malformed:
            print(f"hsmproxy decode: {malformed} of {total} messages malformed", file=sys.stderr)


class _TreeOut:
    def __init__(self, args):
        from rich.console import Console

        self.console = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self.show_secrets = args.show_secrets
        self.max_bytes = None if args.full else 48

    def _title(self, item: Item, text: str) -> str:
        where = " ".join(str(item.context[k]) for k in ("seq", "conn", "dir") if k in item.context)
        return f"[dim]{where or item.origin}[/dim] {text}"

    def message(self, item: Item, message: wire.Message) -> None:
        shown = wire.to_jsonable(message, show_secrets=self.show_secrets, max_bytes=self.max_bytes)
        style = "bold" if message.known else "bold yellow"
        self._tree(item, f"[{style}]{message.name}[/{style}] [dim]({message.type}, {len(item.body)} bytes)[/dim]", shown)

    def shown(self, item: Item, rendered: dict) -> None:
        head = f"[bold]{rendered.get('name')}[/bold] [dim]({rendered.get('type')}, {rendered.get('len')} bytes)[/dim]"
        if rendered.get("recorded") == RECORDED_TYPE_AND_LENGTH:
            why = "type and length only: not decoded, so it could hold secrets"
            self.console.print(self._title(item, f"{head} [dim]({why})[/dim]"))
            return
        self._tree(item, f"{head} [dim](body not recorded: it may hold secrets)[/dim]", rendered)

    def _tree(self, item: Item, title: str, rendered: dict) -> None:
        from rich.markup import escape
        from rich.tree import Tree

        if item.context.get("verdict"):
            title += f" [magenta]{item.context['verdict']}[/magenta]"
        if item.context.get("tail"):
            title += f" [dim](a long frame: {item.context['tail']} more bytes followed, relayed unread)[/dim]"
        tree = Tree(self._title(item, title))
        _add_fields(tree, rendered.get("fields", {}), escape)
        if rendered.get("trailing"):
            tree.add(f"[yellow]trailing bytes (kept, as hsmd ignores them):[/yellow] {_scalar(rendered['trailing'], escape)}")
        self.console.print(tree)

    def event(self, item: Item) -> None:
        self.console.print(self._title(item, f"[dim]{item.event}[/dim]"))

    def error(self, item: Item, exc: wire.DecodeError) -> None:
        from rich.markup import escape

        self.console.print(self._title(item, f"[bold red]malformed[/bold red] {escape(str(exc))}"))

    def close(self, total: int, malformed: int) -> None:
        if malformed:
            self.err.print(f"[red]{malformed} of {total} messages malformed[/red]")


def _is_embedded_view(value) -> bool:
    """A message carried whole in a field, as ``wire.to_jsonable`` shows it."""
    return isinstance(value, dict) and "type" in value and "len" in value and (
        "fields" in value or value.get("undecodable") or value.get("too_deep"))


def _add_embedded(tree, key: str, view: dict, escape) -> None:
    label = f"[cyan]{escape(key)}[/cyan]: "
    if "fields" in view:
        branch = tree.add(label + f"[bold]{escape(str(view.get('name')))}[/bold] "
                                  f"[dim]({view.get('type')}, {view.get('len')} bytes)[/dim]")
        _add_fields(branch, view["fields"], escape)
        if view.get("trailing"):
            branch.add(f"[yellow]trailing bytes:[/yellow] {_scalar(view['trailing'], escape)}")
        return
    why = "does not decode" if view.get("undecodable") else "nested too deep to decode"
    shown = f": {escape(view['hex'])}" if view.get("hex") else "; not shown, it could hold secrets"
    tree.add(label + f"{escape(wire.type_name(view.get('type')))} [dim]({view.get('type')}, {view.get('len')} bytes; "
                     f"{why}{shown})[/dim]")


def _add_fields(tree, value, escape) -> None:
    if isinstance(value, dict):
        if not value:
            tree.add("[dim](no fields)[/dim]")
        for key, item in value.items():
            if _is_embedded_view(item):
                _add_embedded(tree, str(key), item, escape)
            elif isinstance(item, (dict, list)) and item:
                _add_fields(tree.add(f"[cyan]{escape(str(key))}[/cyan]"), item, escape)
            else:
                tree.add(f"[cyan]{escape(str(key))}[/cyan]: {_scalar(item, escape)}")
    elif isinstance(value, list):
        if all(isinstance(item, int) for item in value):
            tree.add(escape(str(value)))
            return
        for index, item in enumerate(value):
            if isinstance(item, (dict, list)):
                _add_fields(tree.add(f"[cyan][{index}][/cyan]"), item, escape)
            else:
                tree.add(f"[cyan][{index}][/cyan]: {_scalar(item, escape)}")


def _scalar(value, escape) -> str:
    if value is None:
        return "[dim]absent[/dim]"
    if wire.is_redacted(value):
        return f"[magenta]{escape(value)}[/magenta]"
    if isinstance(value, str):
        return escape(value) if value else '[dim]""[/dim]'
    return escape(str(value))
