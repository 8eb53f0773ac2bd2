"""Fault plans: the TOML form, the one-line form, and the errors for bad input."""

import signal

import pytest

import wire
from faults.plan import FAMILIES, PREFIXES, PlanError, load_plan, parse_one_line, parse_toml

SIGN_REMOTE = wire.SPECS_BY_NAME["hsmd_sign_remote_commitment_tx"].type


def test_one_line_mirrors_dev_disconnect():
    [rule] = parse_one_line("-hsmd_sign_remote_commitment_tx*2")
    assert (rule.action, rule.point, rule.nth, rule.count) == ("disconnect", "request.before_forward", 2, 1)
    assert rule.request_types == {SIGN_REMOTE}
    [rule] = parse_one_line("+sign_remote_commitment_tx")  # the hsmd_ prefix may be left out
    assert (rule.action, rule.point, rule.nth) == ("disconnect", "reply.before_forward", 1)


def test_one_line_every_prefix_loads():
    for prefix, (action, point) in PREFIXES.items():
        extra = " ms=10" if action == "delay" else ""
        [rule] = parse_one_line(f"{prefix}hsmd_sign_remote_commitment_tx{extra}")
        assert (rule.action, rule.point) == (action, point)


def test_one_line_options_points_and_conditions():
    rules = parse_one_line(
        "!hsmd_sign_remote_commitment_tx*3 dbid=7 commit_num>=5 signal=TERM;"
        " ~hsmd_get_per_commitment_point@sent ms=200 jitter=50 p=0.5 count=all"
    )
    kill, delay = rules
    assert (kill.action, kill.point, kill.nth, kill.dbid, kill.signal) == ("kill-node", "reply.before_forward", 3, 7, signal.SIGTERM)
    assert [str(p) for p in kill.where] == ["commit_num>=5"]
    assert (delay.point, delay.delay_ms, delay.jitter_ms, delay.probability, delay.count) == (
        "request.after_forward", 200, 50, 0.5, None)
    assert [r.name for r in rules] == ["rule1", "rule2"]


def test_toml_plan(tmp_path):
    path = tmp_path / "crash.toml"
    path.write_text(
        """
seed = 42
[[rule]]
name = "crash-window"
message = "hsmd_sign_remote_commitment_tx"
point = "reply.before_forward"
action = "kill-node"
nth = 2
where = { commit_num = 1 }

[[rule]]
family = "signing"
action = "delay"
ms = 20
count = "all"
probability = 0.25

[[rule]]
message = "hsmd_get_per_commitment_point_reply"
action = "corrupt"
mode = "stale"
"""
    )
    plan = load_plan(str(path))
    assert plan.seed == 42
    crash, delay, corrupt = plan.rules
    assert crash.name == "crash-window" and crash.where[0].value == 1
    assert delay.request_types == {wire.SPECS_BY_NAME[n].type for n in FAMILIES["signing"]}
    assert SIGN_REMOTE in delay.request_types and delay.count is None
    assert corrupt.point == "reply.before_forward" and corrupt.reply_types
    assert crash.to_json()["messages"] == ["hsmd_sign_remote_commitment_tx"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("-hsmd_sign_remote_comitment_tx", "did you mean 'hsmd_sign_remote_commitment_tx'"),
        ("-sign_remote_comitment_tx", "did you mean 'hsmd_sign_remote_commitment_tx'"),
        ("*hsmd_init", "unknown prefix '*'"),
        ("$hsmd_init@reply.after_forward", "needs a *.before_forward point"),
        ("?hsmd_init@reply", "request.before_forward"),
        ("~hsmd_init", "delay needs ms"),
        ("-hsmd_init dbd=3", "did you mean 'dbid'"),
        ("-hsmd_sign_remote_commitment_tx comit_num==3", "did you mean 'commit_num'"),
        ("-hsmd_init p=2", "between 0 and 1"),
        ("-status_log", "status message"),
        ("-hsmd_init@soon", "point 'soon'"),
        ("-hsmd_init@sent", "needs a *.before_forward point"),
        ("-hsmd_sign_tx_reply@request", "reply.* points"),
        ("%hsmd_sign_tx_reply mode=stael", "did you mean 'stale'"),
        ("!hsmd_init signal=SIGKIL", "did you mean 'SIGKILL'"),
        ("", "empty fault plan"),
        ("-hsmd_init peer=abcd", "33-byte node id"),
        ("?hsmd_init role=master", "never refuses the master"),
    ],
)
def test_bad_one_line_plans_say_what_to_do(text, expected):
    with pytest.raises(PlanError) as err:
        parse_one_line(text)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[[rule]]\naction = 'drop'\nmesage = 'hsmd_init'\n", "did you mean 'message'"),
        ("[[rule]]\naction = 'dorp'\n", "did you mean 'drop'"),
        ("sed = 1\n", "did you mean 'seed'"),
        ("[[rule]]\naction = 'drop'\nfamily = 'signin'\n", "did you mean 'signing'"),
        ("[[rule]]\nname='a'\naction='drop'\n[[rule]]\nname='a'\naction='drop'\n", "two rules are named 'a'"),
        ("[[rule]\n", "not valid TOML"),
        ("seed = -1\n", "non-negative"),
    ],
)
def test_bad_toml_plans_say_what_to_do(text, expected):
    with pytest.raises(PlanError) as err:
        parse_toml(text, origin="plan.toml")
    assert expected in str(err.value)
    assert str(err.value).startswith(("plan.toml", "rule"))


def test_missing_plan_file_is_named(tmp_path):
    with pytest.raises(PlanError, match="cannot read the fault plan .*nope.toml"):
        load_plan(str(tmp_path / "nope.toml"))


def test_one_line_accepts_families():
    [rule] = parse_one_line("~signing ms=5 count=all")
    assert SIGN_REMOTE in rule.request_types and len(rule.request_types) == len(FAMILIES["signing"])
    with pytest.raises(PlanError, match="families of messages: all, signing, init, channel, commitment"):
        parse_one_line("~signin ms=5")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from faults.plan import ACTIONS, POINTS, RULE_KEYS, rule_from_mapping  # noqa: E402

_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 1 << 70), st.floats(allow_nan=True), st.text(max_size=12),
                    st.lists(st.text(max_size=8), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_any_one_line_text_is_a_plan_or_a_plan_error(text):
    try:
        parse_one_line(text)
    except PlanError as exc:
        assert str(exc)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.sampled_from(RULE_KEYS + ("bogus",)), _values, max_size=6),
    st.sampled_from(ACTIONS),
    st.sampled_from(["hsmd_sign_remote_commitment_tx", "hsmd_sign_tx_reply", "signing", 19, "nope"]),
    st.sampled_from(POINTS + ("req", "reply", "soon")),
)
def test_any_mapping_is_a_rule_or_a_plan_error(data, action, message, point):
    data = {"action": action, "family" if message == "signing" else "message": message, "point": point, **data}
    try:
        rule_from_mapping(data, "r")
    except PlanError as exc:
        assert str(exc).startswith("rule ")
