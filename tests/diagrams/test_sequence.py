"""The diagram model built from the traces of real chaos story runs, and the window logic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from diagrams.sequence import (
    CHATTER,
    CRITICAL_KINDS,
    DIVERGENCE,
    FAULT,
    GAP,
    KILL,
    NODE,
    NOTE_KINDS,
    PROXY,
    RESTART,
    SIGNER,
    Message,
    Note,
    Sequence,
    Where,
    critical_windows,
    join_windows,
    lanes_of,
    sequence_from_records,
    sequence_from_traces,
)
import wire
from proxy.addons.trace import read_trace


def notes(seq: Sequence, kind: str) -> list[Note]:
    return [s for s in seq.steps if isinstance(s, Note) and s.kind == kind]


def index_of(seq: Sequence, predicate) -> int:
    return next(i for i, step in enumerate(seq.steps) if predicate(step))


def test_honest_crash_tells_the_write_up_s_story(story_traces):
    seq = sequence_from_traces(story_traces["honest-crash"], title="honest-crash")
    assert [lane.key for lane in seq.lanes] == [NODE, PROXY, SIGNER]
    assert seq.sources == ("trace-0.mp", "trace-1.mp") and seq.title == "honest-crash"
    steps = seq.steps

    # The signer signs counterparty commitment 1; its reply stops at the proxy, which kills the node.
    signed = index_of(seq, lambda s: isinstance(s, Message) and s.label == "sign_remote_commitment_tx ch1 #1")
    assert (steps[signed].sender, steps[signed].receiver, steps[signed].where.trace) == (NODE, SIGNER, 0)
    reply = steps[signed + 1]
    assert (reply.sender, reply.receiver, reply.reply) == (SIGNER, PROXY, True)
    assert reply.label == "reply to sign_remote_commitment_tx ch1 #1"
    fault, kill = steps[signed + 2], steps[signed + 3]
    assert fault.kind == FAULT and fault.lanes == (PROXY,)
    assert fault.lines[0] == "fault kill-node at reply.before_forward" and "crash-window" in fault.lines[1]
    assert (kill.kind, kill.lanes, kill.lines) == (KILL, (NODE, SIGNER), ("node killed (SIGKILL)",))
    crash = steps[signed + 4]
    assert crash.kind == DIVERGENCE and crash.lines == ("crashed_in_window #1 (ch1): possible",)
    # Nothing reaches the node after the kill.
    assert not any(isinstance(s, Message) and s.receiver == NODE for s in steps[signed + 1:]
                   if s.where.trace == 0)

    # The restart, then the node asks to sign 1 again with other contents; the signer refuses.
    (restart,) = notes(seq, RESTART)
    assert restart.lines == ("restart: trace-1.mp",) and restart.where == Where(1, 1)
    retry = index_of(seq, lambda s: isinstance(s, Message) and s.where.trace == 1 and s.sender == NODE
                     and s.label.startswith("sign_remote_commitment_tx"))
    assert steps[retry].label == "sign_remote_commitment_tx ch1 #1" and steps.index(restart) < retry
    flagged = steps[retry + 1]
    assert flagged.kind == DIVERGENCE and flagged.lanes == (PROXY,)
    assert "retry_changed #1: predicted → confirmed" in flagged.lines
    assert "double_signed #1: predicted → refuted" in flagged.lines
    assert "signer_rejected #1: confirmed [policy-commitment-retry-same]" in flagged.lines
    # The crash in the window, flagged in the first trace, is confirmed by the retry.
    assert any(n.lines == ("crashed_in_window #1 (ch1): possible → confirmed",) for n in notes(seq, DIVERGENCE)
               if n.where.trace == 1)
    refused = [s for s in steps if isinstance(s, Message) and s.label.startswith("refused")]
    assert [(s.sender, s.receiver, s.label) for s in refused] == [(SIGNER, NODE, "refused sign_remote_commitment_tx ch1 #1")]
    assert steps.index(refused[0]) > retry


def test_wal_fix_shows_the_crash_resolved_by_the_identical_retry(story_traces):
    seq = sequence_from_traces(story_traces["wal-fix"])
    lines = [line for note in notes(seq, DIVERGENCE) for line in note.lines]
    assert lines == ["crashed_in_window #1 (ch1): possible", "crashed_in_window #1 (ch1): possible → resolved"]
    retry = [s for s in seq.steps if isinstance(s, Message) and s.where.trace == 1
             and s.label == "sign_remote_commitment_tx ch1 #1"]
    assert len(retry) == 1
    # The signer answers the retry and the node carries on to commitment 2.
    assert any(isinstance(s, Message) and s.label == "reply to sign_remote_commitment_tx ch1 #1"
               and (s.sender, s.receiver) == (SIGNER, NODE) for s in seq.steps)
    assert any(isinstance(s, Message) and s.label == "sign_remote_commitment_tx ch1 #2" for s in seq.steps)


def test_chatter_is_counted_not_drawn(story_traces):
    seq = sequence_from_traces(story_traces["honest-crash"])
    drawn = {s.label.split()[0] for s in seq.steps if isinstance(s, Message)}
    assert "get_per_commitment_point" not in drawn and "init" not in drawn and "ecdh_req" not in drawn
    counted = "\n".join(line for note in notes(seq, CHATTER) for line in note.lines)
    assert "get_per_commitment_point ×" in counted and "status_log ×" in counted
    frames = sum(1 for path in story_traces["honest-crash"] for r in read_trace(str(path)) if r.get("kind") == "frame")
    arrows = sum(1 for s in seq.steps if isinstance(s, Message))
    assert 0 < arrows < frames / 3


def test_one_trace_from_its_records_is_the_first_part_of_the_run(story_traces):
    first = story_traces["honest-crash"][0]
    alone = sequence_from_records(read_trace(str(first)))
    both = sequence_from_traces(story_traces["honest-crash"])
    assert alone.steps == tuple(s for s in both.steps if s.where.trace == 0)


def test_a_channel_filter_keeps_that_channel(story_traces):
    paths = story_traces["honest-crash"]
    everything = sequence_from_traces(paths)
    by_dbid = sequence_from_traces(paths, channel="1")
    by_peer = sequence_from_traces(paths, channel="020508af")
    assert by_dbid.steps == by_peer.steps
    assert [s for s in by_dbid.steps if isinstance(s, Message)] == [s for s in everything.steps if isinstance(s, Message)]
    other = sequence_from_traces(paths, channel="2")
    assert not any(isinstance(s, Message) for s in other.steps)
    assert {n.kind for n in other.steps} <= {RESTART, KILL, "exit", CHATTER} and notes(other, RESTART)


def test_from_and_to_cut_by_record_numbers(story_traces):
    paths = story_traces["honest-crash"]
    everything = sequence_from_traces(paths)
    signed = index_of(everything, lambda s: isinstance(s, Message) and s.label == "sign_remote_commitment_tx ch1 #1")
    start = everything.steps[signed].where
    cut = sequence_from_traces(paths, start=start.record, end=Where(1, 23))
    assert cut.steps[0] == everything.steps[signed]
    assert all(start <= s.where <= Where(1, 23) for s in cut.steps)
    assert notes(cut, FAULT) and notes(cut, RESTART)
    assert not any(s.where > Where(1, 23) for s in cut.steps)
    # a cut between the retry's predicted divergences and the retry itself keeps them on it
    retry = next(s for s in everything.steps if isinstance(s, Message) and s.where.trace == 1
                 and s.label == "sign_remote_commitment_tx ch1 #1")
    from_retry = sequence_from_traces(paths, start=retry.where)
    assert from_retry.steps[0] == retry and from_retry.steps[1].kind == DIVERGENCE
    assert "retry_changed #1: predicted → confirmed" in from_retry.steps[1].lines


def test_the_critical_windows_of_the_honest_crash(story_traces):
    seq = sequence_from_traces(story_traces["honest-crash"])
    windows = critical_windows(seq, context=2)
    assert windows, "the fault and the divergences are critical"
    for win in windows:
        lo, hi = win.span
        assert win.steps == seq.steps[lo:hi]
        assert any(isinstance(s, Note) and s.kind in CRITICAL_KINDS for s in win.steps)
    joined = join_windows(seq, windows)
    gaps = notes(joined, GAP)
    assert gaps and all("left out" in g.lines[0] and "record" in g.lines[0] for g in gaps)
    assert len(joined.steps) - len(gaps) == sum(len(w.steps) for w in windows) < len(seq.steps)
    # the default context keeps the whole story of the crash and the retry in one window
    (default,) = critical_windows(seq)
    assert notes(default, FAULT) and notes(default, RESTART) and any(
        isinstance(s, Message) and s.label.startswith("refused") for s in default.steps)


def _sequence_of(kinds: list[str]) -> Sequence:
    steps = tuple(Note((NODE,), (f"step {i}",), kind, Where(0, i + 1)) for i, kind in enumerate(kinds))
    return Sequence(lanes_of(steps), steps)


@given(st.lists(st.sampled_from([k for k in NOTE_KINDS if k != GAP]), max_size=60), st.integers(min_value=0, max_value=6))
def test_windows_cover_exactly_the_context_of_each_critical_step(kinds, context):
    seq = _sequence_of(kinds)
    windows = critical_windows(seq, context=context)
    critical = [i for i, kind in enumerate(kinds) if kind in CRITICAL_KINDS]
    wanted = {j for i in critical for j in range(i - context, i + context + 1) if 0 <= j < len(kinds)}
    covered = [j for w in windows for j in range(*w.span)]
    assert covered == sorted(wanted)  # in order, each step once
    for before, after in zip(windows, windows[1:]):
        assert before.span[1] < after.span[0]  # merged when they overlap or touch
    # one gap note for each run of steps left out
    left_out = set(range(len(kinds))) - wanted
    runs = sum(1 for j in left_out if j - 1 not in left_out)
    assert len(notes(join_windows(seq, windows), GAP)) == runs


values = st.none() | st.booleans() | st.integers(-2, 2**40) | st.text(max_size=8) | st.binary(max_size=12) | \
    st.lists(st.integers(0, 3), max_size=2) | st.dictionaries(st.sampled_from(["role", "conn_id", "dbid"]), st.integers(0, 3))
record_keys = st.sampled_from(["kind", "conn", "dir", "seq", "raw", "msg", "type", "verdict", "digest",
                               "embedded_digest", "event", "status"])
records = st.dictionaries(record_keys, values) | st.fixed_dictionaries(
    {"kind": st.sampled_from(["frame", "fault", "divergence", "exit", "conn", "raw", "header"])},
    optional={"conn": st.fixed_dictionaries({"conn_id": st.integers(0, 3), "role": st.sampled_from(["client", "master", "status"])},
                                            optional={"dbid": values, "peer_id": values}),
              "dir": st.sampled_from(["request", "reply", "status", "x"]), "seq": values, "raw": values,
              "msg": values, "verdict": values, "digest": values, "embedded_digest": values, "type": values,
              "event": st.dictionaries(st.sampled_from(["kind", "op_id", "status", "conn", "request_seq", "dbid",
                                                        "peer_id", "index", "point", "action", "connection",
                                                        "seq", "message", "rule", "detail"]), values)})


@given(st.lists(records, max_size=30))
def test_any_records_give_a_diagram_or_a_trace_format_error(body):
    """A trace whose records are well-formed msgpack but not what the proxy writes is drawn as far
    as it makes sense, never a crash."""
    seq = sequence_from_records([{"kind": "header", "format": "hsmproxy-trace"}, *body])
    assert all(isinstance(step, (Message, Note)) for step in seq.steps)


# -- what the proxy did to a frame, from hand-made records (the real runs above cover kill-node) --

CLIENT = {"conn_id": 2, "role": "client", "peer_id": bytes.fromhex("02" + "ab" * 32), "dbid": 7, "parent_id": 1}
REVOKE = wire.encode(wire.build("hsmd_revoke_commitment_tx", commit_num=3))
REVOKE_REPLY = wire.encode(wire.build("hsmd_revoke_commitment_tx_reply", old_commitment_secret=b"\x11" * 32,
                                      next_per_commitment_point=b"\x02" + b"\x22" * 32))


def exchange_records(action: str | None, point: str | None, verdict: str = "Forward") -> list[dict]:
    fault = {"kind": "fault", "event": {"rule": "r1", "action": action, "point": point, "seq": 0,
                                        "connection": f"client:7:{CLIENT['peer_id'].hex()[:16]}", "message": "x", "detail": ""}}
    request = {"kind": "frame", "conn": CLIENT, "dir": "request", "seq": 0, "raw": REVOKE, "digest": b"d1",
               "verdict": verdict if point and point.startswith("request") else "Forward"}
    reply = {"kind": "frame", "conn": CLIENT, "dir": "reply", "seq": 0, "raw": REVOKE_REPLY, "digest": b"d2",
             "verdict": verdict if point and point.startswith("reply") else "Forward"}
    records = [{"kind": "header", "format": "hsmproxy-trace"}]
    for record in (request, reply):
        if action and point.startswith(record["dir"]) and point.endswith("before_forward"):
            records.append(fault)
        records.append(record)
        if action and point.startswith(record["dir"]) and point.endswith("after_forward"):
            records.append(fault)
    return records


def arrows(seq: Sequence) -> list[tuple[str, str]]:
    return [(s.sender, s.receiver) if isinstance(s, Message) else s.kind for s in seq.steps]


def test_what_the_proxy_did_shows_in_the_arrows():
    plain = sequence_from_records(exchange_records(None, None))
    assert arrows(plain) == [(NODE, SIGNER), (SIGNER, NODE)] and PROXY not in [l.key for l in plain.lanes]
    assert [s.label for s in plain.steps] == ["revoke_commitment_tx ch7 #3", "reply to revoke_commitment_tx ch7 #3"]

    dropped = sequence_from_records(exchange_records("drop", "request.before_forward", verdict="Drop"))
    assert arrows(dropped)[:4] == [(NODE, PROXY), FAULT, "verdict", (SIGNER, NODE)]  # never reached the signer
    assert dropped.steps[2].lines == ("dropped",)

    delayed = sequence_from_records(exchange_records("delay", "request.before_forward"))
    assert arrows(delayed) == [(NODE, PROXY), FAULT, (PROXY, SIGNER), (SIGNER, NODE)]

    signer_killed = sequence_from_records(exchange_records("kill-signer", "request.before_forward"))
    assert arrows(signer_killed)[:3] == [(NODE, PROXY), FAULT, KILL] and (PROXY, SIGNER) not in arrows(signer_killed)

    # killed as it asked: the request still reaches the signer, which answers a node that is gone
    asked = sequence_from_records(exchange_records("kill-node", "request.before_forward"))
    assert arrows(asked) == [(NODE, PROXY), FAULT, KILL, (PROXY, SIGNER), (SIGNER, NODE)]

    node_killed = sequence_from_records(exchange_records("kill-node", "reply.before_forward"))
    assert arrows(node_killed) == [(NODE, SIGNER), (SIGNER, PROXY), FAULT, KILL]

    after = sequence_from_records(exchange_records("delay", "reply.after_forward"))
    assert arrows(after) == [(NODE, SIGNER), (SIGNER, NODE), FAULT]  # it fired once the node had the reply

    held = sequence_from_records(exchange_records("hold", "reply.before_forward", verdict="Hold"))
    assert arrows(held) == [(NODE, SIGNER), (SIGNER, PROXY), FAULT, "verdict"]
    # the secret in the reply's body is nowhere
    assert "11" * 8 not in repr(held) and "1111" not in "".join(str(s) for s in held.steps)
