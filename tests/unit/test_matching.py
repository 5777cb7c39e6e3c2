"""The trigger matcher: each selector condition, the reasons it gives, and index == explain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow.engine.matching import TriggerIndex, Verdict
from eventflow.errors import ConfigError, ExpressionError
from eventflow.events import Event, ReceivedEvent
from eventflow.resources.models import Trigger

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def trigger(name: str, event_name: str = "push", **selector: Any) -> Trigger:
    return Trigger.model_validate(
        {
            "apiVersion": "eventflow.io/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": name},
            "spec": {"events": {event_name: selector}, "workflow": "build"},
        }
    )


def received(
    type: str = "com.github.push",
    source: str = "https://github.com/org/repo",
    subject: str | None = None,
    data: Any = None,
    sensor: str = "github",
) -> ReceivedEvent:
    event = Event(id="e1", source=source, type=type, subject=subject, data=data)
    return ReceivedEvent(event=event, sensor=sensor, received_at=NOW)


def verdict(name: str, reason: str | None = None, event_name: str = "push") -> Verdict:
    return Verdict(name, event_name, matched=reason is None, reason=reason)


def explain_one(event: ReceivedEvent, **selector: Any) -> Verdict:
    [result] = TriggerIndex.build([trigger("t", **selector)]).explain(event)
    return result


def match_one(event: ReceivedEvent, **selector: Any) -> list[Verdict]:
    return TriggerIndex.build([trigger("t", **selector)]).match(event)


# --- attributes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "reason"),
    [
        ("com.github.push", "com.github.push", None),
        ("com.github.push", "com.github.pull", "type: 'com.github.pull' is not 'com.github.push'"),
        ("com.github.*", "com.github.push", None),
        ("com.github.*", "com.github.", None),
        (
            "com.github.*",
            "com.gitlab.push",
            "type: 'com.gitlab.push' does not match 'com.github.*'",
        ),
        ("com.github.*", "com", "type: 'com' does not match 'com.github.*'"),
        ("*", "x", None),
        ("a*b", "a*b", None),
        ("a*b", "axb", "type: 'axb' is not 'a*b'"),
        (
            "com.github.push",
            "com.github.push.x",
            "type: 'com.github.push.x' is not 'com.github.push'",
        ),
    ],
)
def test_type_pattern_is_exact_or_prefix(pattern: str, value: str, reason: str | None) -> None:
    """type is compared exactly, or as a prefix when the pattern ends with '*'."""
    event = received(type=value)
    assert explain_one(event, type=pattern) == verdict("t", reason)
    assert match_one(event, type=pattern) == ([] if reason else [verdict("t")])


@pytest.mark.parametrize(
    ("pattern", "subject", "reason"),
    [
        ("*", None, "subject: '' does not match '*'"),
        ("*", "", "subject: '' does not match '*'"),
        ("*", "main", None),
        ("", None, None),
        ("refs/heads/*", "refs/heads/main", None),
        ("refs/heads/*", "refs/tags/v1", "subject: 'refs/tags/v1' does not match 'refs/heads/*'"),
        ("refs/heads/main", None, "subject: '' is not 'refs/heads/main'"),
    ],
)
def test_subject_missing_counts_as_empty(
    pattern: str, subject: str | None, reason: str | None
) -> None:
    """A missing subject is '' : only the exact pattern '' admits it, not even '*'."""
    event = received(subject=subject)
    assert explain_one(event, subject=pattern) == verdict("t", reason)
    assert match_one(event, subject=pattern) == ([] if reason else [verdict("t")])


def test_source_prefix_and_exact() -> None:
    """source is matched like type: exact or by prefix."""
    event = received(source="https://github.com/org/repo")
    assert explain_one(event, source="https://github.com/*") == verdict("t")
    assert explain_one(event, source="https://gitlab.com/*") == verdict(
        "t", "source: 'https://github.com/org/repo' does not match 'https://gitlab.com/*'"
    )
    assert explain_one(event, source="https://github.com/org") == verdict(
        "t", "source: 'https://github.com/org/repo' is not 'https://github.com/org'"
    )


def test_sensor_must_equal_and_sensorless_selector_takes_any_sensor() -> None:
    """A selector's sensor must equal the stamp; without one every sensor is admitted."""
    index = TriggerIndex.build([trigger("gh", sensor="github"), trigger("any", type="*")])
    assert index.match(received(sensor="gitlab")) == [verdict("any")]
    assert index.match(received(sensor="github")) == [verdict("any"), verdict("gh")]
    assert index.explain(received(sensor="gitlab")) == [
        verdict("any"),
        verdict("gh", "sensor: 'gitlab' is not 'github'"),
    ]


def test_empty_selector_admits_every_event() -> None:
    """A selector with no condition matches any event from any sensor."""
    assert match_one(received(sensor="s3", type="x")) == [verdict("t")]


def test_overlapping_prefixes_all_match() -> None:
    """Every prefix of the event's type that is a pattern admits its triggers."""
    index = TriggerIndex.build(
        [
            trigger("a", type="*"),
            trigger("b", type="com.*"),
            trigger("c", type="com.github.*"),
            trigger("d", type="com.github.push"),
            trigger("e", type="com.github.push.*"),
            trigger("f", type="org.*"),
        ]
    )
    assert index.match(received(type="com.github.push")) == [
        verdict("a"),
        verdict("b"),
        verdict("c"),
        verdict("d"),
    ]


def test_all_conditions_must_hold_and_first_failure_is_reported_in_order() -> None:
    """explain reports the first failing condition: sensor, type, source, subject, data, filter."""
    selector = {
        "sensor": "github",
        "type": "com.github.*",
        "source": "https://github.com/*",
        "subject": "refs/heads/*",
        "data": {"ref": "main", "size": 1},
        "filter": "data.size > 5",
    }
    good: dict[str, Any] = {
        "type": "com.github.push",
        "source": "https://github.com/org/repo",
        "subject": "refs/heads/main",
        "data": {"ref": "main", "size": 1},
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sensor": "s3", "type": "x"}, "sensor: 's3' is not 'github'"),
        ({"type": "x", "source": "y"}, "type: 'x' does not match 'com.github.*'"),
        ({"source": "y", "subject": "z"}, "source: 'y' does not match 'https://github.com/*'"),
        ({"subject": "z", "data": {}}, "subject: 'z' does not match 'refs/heads/*'"),
        ({"data": {"size": 2}}, "data.ref: missing"),
        ({"data": {"ref": "main", "size": 2}}, "data.size: 2 is not 1"),
        ({}, "filter 'data.size > 5' is false"),
    ]
    for change, reason in cases:
        event = received(**{**good, **change})
        assert explain_one(event, **selector) == verdict("t", reason)


# --- data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "data", "reason"),
    [
        ("org/repo", {"repository": {"full_name": "org/repo"}}, None),
        (
            "org/repo",
            {"repository": {"full_name": "a/b"}},
            "data.repository.full_name: 'a/b' is not 'org/repo'",
        ),
        ("org/repo", {"repository": {}}, "data.repository.full_name: missing"),
        ("org/repo", {"repository": "org/repo"}, "data.repository.full_name: missing"),
        ("org/repo", {"repository": ["full_name"]}, "data.repository.full_name: missing"),
        ("org/repo", None, "data.repository.full_name: missing"),
        ("org/repo", "text", "data.repository.full_name: missing"),
        ("org/repo", b"bytes", "data.repository.full_name: missing"),
        (1, {"repository": {"full_name": 1.0}}, None),
        (1.0, {"repository": {"full_name": 1}}, None),
        (1, {"repository": {"full_name": "1"}}, "data.repository.full_name: '1' is not 1"),
        ("1", {"repository": {"full_name": 1}}, "data.repository.full_name: 1 is not '1'"),
        (1, {"repository": {"full_name": True}}, "data.repository.full_name: True is not 1"),
        (True, {"repository": {"full_name": 1}}, "data.repository.full_name: 1 is not True"),
        (False, {"repository": {"full_name": 0}}, "data.repository.full_name: 0 is not False"),
        (True, {"repository": {"full_name": True}}, None),
        (0, {"repository": {"full_name": None}}, "data.repository.full_name: None is not 0"),
        ("x", {"repository": {"full_name": ["x"]}}, "data.repository.full_name: ['x'] is not 'x'"),
        (
            "x",
            {"repository": {"full_name": {"x": 1}}},
            "data.repository.full_name: {'x': 1} is not 'x'",
        ),
        (["a/b", "org/repo"], {"repository": {"full_name": "org/repo"}}, None),
        (
            ["a/b", 2, True],
            {"repository": {"full_name": "org/repo"}},
            "data.repository.full_name: 'org/repo' is not one of ['a/b', 2, True]",
        ),
        (
            [2, True],
            {"repository": {"full_name": 1}},
            "data.repository.full_name: 1 is not one of [2, True]",
        ),
        ([2, True], {"repository": {"full_name": 2.0}}, None),
    ],
)
def test_data_equality_is_type_aware(expected: Any, data: Any, reason: str | None) -> None:
    """data paths must exist and hold an accepted scalar: 1 == 1.0, '1' != 1, True != 1."""
    selector = {"data": {"repository.full_name": expected}}
    event = received(data=data)
    assert explain_one(event, **selector) == verdict("t", reason)
    assert match_one(event, **selector) == ([] if reason else [verdict("t")])


def test_long_data_value_is_shortened_in_reason() -> None:
    """A big refused value is cut to 80 characters in the reason."""
    event = received(data={"ref": "x" * 200})
    assert explain_one(event, data={"ref": "main"}) == verdict(
        "t", "data.ref: '" + "x" * 76 + "... is not 'main'"
    )


def test_data_conditions_are_checked_in_key_order() -> None:
    """With several data paths, explain names the first failing one in the order written."""
    event = received(data={"a": 1})
    assert explain_one(event, data={"b": 2, "a": 2}) == verdict("t", "data.b: missing")
    assert explain_one(event, data={"a": 2, "b": 2}) == verdict("t", "data.a: 1 is not 2")


def test_triggers_sharing_a_type_are_told_apart_by_data() -> None:
    """Among many triggers on one type, only those whose every data value fits match."""
    triggers = [trigger(f"repo-{n}", type="push", data={"repo": f"r{n}"}) for n in range(50)]
    triggers.append(trigger("both", type="push", data={"repo": "r7", "ref": "main"}))
    triggers.append(trigger("other-path", type="push", data={"ref": "main"}))
    index = TriggerIndex.build(triggers)
    assert index.match(received(type="push", data={"repo": "r7", "ref": "dev"})) == [
        verdict("repo-7")
    ]
    assert index.match(received(type="push", data={"repo": "r7", "ref": "main"})) == [
        verdict("both"),
        verdict("other-path"),
        verdict("repo-7"),
    ]


# --- filter --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("data.size > 0", None),
        ("data.size > 5", "filter 'data.size > 5' is false"),
        ("data.count > 0", "filter 'data.count > 0' failed: no such key: count"),
        (
            "data.size",
            "filter 'data.size' failed: a condition must give true or false, it gave int 3",
        ),
        ('sensor == "github" && type.startsWith("com.")', None),
        ('subject == ""', None),
    ],
)
def test_filter_is_evaluated_on_the_event(expression: str, reason: str | None) -> None:
    """A CEL filter sees the event's attributes and sensor; false and errors are reasons."""
    event = received(data={"size": 3})
    expected = verdict("t", reason)
    assert explain_one(event, filter=expression) == expected
    assert match_one(event, filter=expression) == [expected]


def test_match_reports_only_what_the_index_admits() -> None:
    """match leaves out selectors the attributes refuse, but keeps filter refusals."""
    index = TriggerIndex.build(
        [
            trigger("refused-by-type", type="other", filter="true"),
            trigger("refused-by-data", data={"size": 1}, filter="true"),
            trigger("filter-false", filter="data.size > 5"),
            trigger("filter-failed", filter="data.nope"),
            trigger("matched", type="com.github.*", filter="data.size == 3"),
        ]
    )
    assert index.match(received(data={"size": 3})) == [
        verdict("filter-failed", "filter 'data.nope' failed: no such key: nope"),
        verdict("filter-false", "filter 'data.size > 5' is false"),
        verdict("matched"),
    ]


def test_explain_covers_every_trigger_sorted_by_name() -> None:
    """explain gives one verdict per trigger, including those the index never considers."""
    index = TriggerIndex.build(
        [
            trigger("zeta", type="com.github.push"),
            trigger("alpha", sensor="s3"),
            trigger("mid", type="x.*", event_name="upload"),
        ]
    )
    assert len(index) == 3
    assert index.explain(received()) == [
        verdict("alpha", "sensor: 'github' is not 's3'"),
        Verdict(
            "mid", "upload", matched=False, reason="type: 'com.github.push' does not match 'x.*'"
        ),
        verdict("zeta"),
    ]


def test_empty_index_matches_nothing() -> None:
    """An index of no triggers has length 0 and no verdicts."""
    index = TriggerIndex.build([])
    assert len(index) == 0
    assert index.match(received()) == []
    assert index.explain(received()) == []


# --- bad input at build --------------------------------------------------------------------


def test_duplicate_trigger_name_is_refused() -> None:
    """Two triggers with one name cannot be told apart in verdicts, so build refuses them."""
    with pytest.raises(ConfigError) as caught:
        TriggerIndex.build([trigger("t"), trigger("t", type="x")])
    assert str(caught.value) == "Trigger/t: defined twice; trigger names are unique"


def test_bad_filter_names_the_trigger_and_field() -> None:
    """A filter that does not compile fails the build with its place in the resource."""
    with pytest.raises(ExpressionError) as caught:
        TriggerIndex.build([trigger("t", filter="params.x == 1")])
    assert str(caught.value) == (
        "Trigger/t: spec.events.push.filter: 'params.x == 1' refers to params, which is not"
        " defined here; available: data, datacontenttype, extensions, id, sensor, source,"
        " subject, time, type"
    )
    assert isinstance(caught.value.__cause__, ExpressionError)


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a."])
def test_data_path_with_empty_segment_is_refused(path: str) -> None:
    """A dotted path with an empty segment could never match, so build refuses it."""
    with pytest.raises(ConfigError) as caught:
        TriggerIndex.build([trigger("t", data={path: 1})])
    assert str(caught.value) == (
        f"Trigger/t: spec.events.push.data: {path!r} has an empty segment;"
        " write a dotted path such as repository.full_name"
    )


def test_empty_list_of_accepted_values_is_refused() -> None:
    """data: {x: []} accepts nothing; build says so rather than never matching."""
    with pytest.raises(ConfigError) as caught:
        TriggerIndex.build([trigger("t", data={"ref": []})])
    assert str(caught.value) == (
        "Trigger/t: spec.events.push.data.ref: an empty list accepts no value; give at least one"
    )


# --- match and explain agree -----------------------------------------------------------------

_WORDS = ["", "a", "a.b", "a.c", "a.b.c", "b"]
_patterns = st.none() | st.sampled_from(_WORDS) | st.sampled_from(_WORDS).map(lambda w: w + "*")
_scalars = st.sampled_from([0, 1, 1.0, True, "1", "a"])
_paths = st.sampled_from(["k", "n.k"])
_selectors = st.fixed_dictionaries(
    {},
    optional={
        "sensor": st.sampled_from(["s1", "s2"]),
        "type": _patterns,
        "source": _patterns,
        "subject": _patterns,
        "data": st.dictionaries(
            _paths, _scalars | st.lists(_scalars, min_size=1, max_size=3), max_size=2
        ),
        "filter": st.sampled_from(["true", "false", "data.k == 1", 'type == "a.b"']),
    },
)
_values: st.SearchStrategy[Any] = _scalars | st.none() | st.just([1])
_data = st.none() | st.fixed_dictionaries(
    {},
    optional={"k": _values, "n": _values | st.fixed_dictionaries({}, optional={"k": _values})},
)
_events = st.builds(
    received,
    type=st.sampled_from(_WORDS[1:]),
    source=st.sampled_from(_WORDS[1:]),
    subject=st.none() | st.sampled_from(_WORDS),
    data=_data,
    sensor=st.sampled_from(["s1", "s2"]),
)


@settings(max_examples=200, deadline=None)
@given(
    selectors=st.lists(_selectors, max_size=12), events=st.lists(_events, min_size=1, max_size=8)
)
def test_match_agrees_with_explain(
    selectors: list[dict[str, Any]], events: list[ReceivedEvent]
) -> None:
    """match returns exactly explain's matches and filter refusals, for any selectors and events."""
    index = TriggerIndex.build(trigger(f"t{n:02d}", **s) for n, s in enumerate(selectors))
    for event in events:
        explained = index.explain(event)
        assert len(explained) == len(selectors)
        expected = [v for v in explained if v.matched or (v.reason or "").startswith("filter ")]
        assert index.match(event) == expected
