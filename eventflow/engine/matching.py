"""Which triggers an event starts: the trigger index (`match`, the hot path) and `explain`.

Every event selector of every trigger is compiled once into an index tree that branches on
sensor, type, source and subject (a dict for exact values, a dict of prefixes probed with
each prefix length of the event's value, and a branch for selectors without the condition),
then on one `data` equality per selector. An event therefore meets only the selectors its
indexed attributes admit; CEL filters run on those alone.

Patterns: `type`, `source` and `subject` are exact, or prefixes when they end with `*`. A
prefix pattern needs the value to start with the part before `*` and to be non-empty, so
`*` alone matches any non-empty value and a missing subject ("") matches no pattern but "".
`data` equality is type-aware as in JSON: 1 == 1.0, but "1" != 1 and true != 1.

Pure: no I/O, no clock. It does not correlate several events, apply policies or start runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from eventflow.errors import ConfigError, ExpressionError
from eventflow.events import ReceivedEvent
from eventflow.expressions import Expression, compile_expression
from eventflow.resources.models import EventSelector, Trigger
from eventflow.resources.scopes import FILTER_VARIABLES

_MISSING: Final = object()
# sensor, type, source, subject: the order of the index levels and of `explain`'s checks.
_ATTRIBUTES: Final = ("sensor", "type", "source", "subject")
_LONGEST_SHOWN = 80

# A hashable stand-in for a JSON scalar under type-aware equality; None when not a scalar.
_Key = tuple[str, str | int | float | bool]


def _key(value: Any) -> _Key | None:
    kind = type(value)
    if kind is str:
        return ("s", value)
    if kind is bool:
        return ("b", value)
    if kind is int or kind is float:
        return ("n", value)
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _LONGEST_SHOWN else text[: _LONGEST_SHOWN - 3] + "..."


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one event selector of one trigger admits an event, and if not, why."""

    trigger: str
    event_name: str
    matched: bool
    reason: str | None


@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str
    stem: str  # the text before a trailing `*`, or the whole text
    is_prefix: bool

    @classmethod
    def parse(cls, text: str) -> _Pattern:
        if text.endswith("*"):
            return cls(text, text[:-1], is_prefix=True)
        return cls(text, text, is_prefix=False)

    def admits(self, value: str) -> bool:
        if self.is_prefix:
            return bool(value) and value.startswith(self.stem)
        return value == self.text

    def refusal(self, attribute: str, value: str) -> str:
        verb = "does not match" if self.is_prefix else "is not"
        return f"{attribute}: {value!r} {verb} {self.text!r}"


@dataclass(frozen=True, slots=True)
class _DataCondition:
    path: str
    segments: tuple[str, ...]
    accepted: frozenset[_Key]
    expected: str  # as the user wrote it, for reasons

    def find(self, data: Any) -> Any:
        for segment in self.segments:
            if type(data) is not dict:
                return _MISSING
            data = data.get(segment, _MISSING)
            if data is _MISSING:
                return _MISSING
        return data

    def holds(self, data: Any) -> bool:
        return _key(self.find(data)) in self.accepted

    def refusal(self, data: Any) -> str | None:
        found = self.find(data)
        if found is _MISSING:
            return f"data.{self.path}: missing"
        if _key(found) in self.accepted:
            return None
        return f"data.{self.path}: {_shown(found)} is not {self.expected}"


@dataclass(frozen=True, slots=True)
class _Selector:
    trigger: str
    event_name: str
    order: int  # position by (trigger, event_name): match sorts by it
    patterns: tuple[_Pattern | None, ...]  # one per _ATTRIBUTES entry
    data: tuple[_DataCondition, ...]
    filter: Expression | None

    def data_holds(self, data: Any) -> bool:
        return all(condition.holds(data) for condition in self.data)

    def refusal(self, values: tuple[str, ...], data: Any) -> str | None:
        """The first condition before the filter that the event fails, in _ATTRIBUTES order."""
        for attribute, pattern, value in zip(_ATTRIBUTES, self.patterns, values, strict=True):
            if pattern is not None and not pattern.admits(value):
                return pattern.refusal(attribute, value)
        for condition in self.data:
            reason = condition.refusal(data)
            if reason is not None:
                return reason
        return None

    def judge(self, context: dict[str, Any]) -> Verdict:
        """The verdict once every condition but the filter holds; `context` is the filter's."""
        if self.filter is None:
            return Verdict(self.trigger, self.event_name, matched=True, reason=None)
        try:
            holds = self.filter.holds(context)
        except ExpressionError as error:
            detail = str(error).removeprefix(f"{self.filter.source!r}: ")
            return Verdict(
                self.trigger,
                self.event_name,
                False,
                f"filter {self.filter.source!r} failed: {detail}",
            )
        if holds:
            return Verdict(self.trigger, self.event_name, matched=True, reason=None)
        return Verdict(
            self.trigger, self.event_name, False, f"filter {self.filter.source!r} is false"
        )


def _compile(trigger: str, event_name: str, selector: EventSelector, order: int) -> _Selector:
    place = f"Trigger/{trigger}: spec.events.{event_name}"
    conditions = []
    for path, expected in selector.data.items():
        segments = tuple(path.split("."))
        if not all(segments):
            raise ConfigError(
                f"{place}.data: {path!r} has an empty segment;"
                " write a dotted path such as repository.full_name"
            )
        accepted = expected if isinstance(expected, list) else [expected]
        if not accepted:
            raise ConfigError(
                f"{place}.data.{path}: an empty list accepts no value; give at least one"
            )
        keys = frozenset(key for key in map(_key, accepted) if key is not None)
        shown = f"one of {_shown(expected)}" if isinstance(expected, list) else _shown(expected)
        conditions.append(_DataCondition(path, segments, keys, shown))
    compiled_filter = None
    if selector.filter is not None:
        try:
            compiled_filter = compile_expression(selector.filter, FILTER_VARIABLES)
        except ExpressionError as error:
            raise ExpressionError(f"{place}.filter: {error}") from error
    texts = (selector.sensor, selector.type, selector.source, selector.subject)
    patterns = tuple(None if text is None else _Pattern.parse(text) for text in texts)
    return _Selector(trigger, event_name, order, patterns, tuple(conditions), compiled_filter)


# --- the index tree ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Leaf:
    """Selectors that agree on the indexed attributes; those with `data` keyed by one path."""

    plain: tuple[_Selector, ...]
    keyed: tuple[tuple[_DataCondition, dict[_Key, tuple[_Selector, ...]]], ...]


@dataclass(frozen=True, slots=True)
class _Fork:
    """A branch on one attribute (`level` in _ATTRIBUTES)."""

    level: int
    exact: dict[str, _Node]
    prefixes: dict[str, _Node]
    lengths: tuple[int, ...]  # of the prefixes, ascending: the slices of a value to probe
    anything: _Node | None


_Node = _Fork | _Leaf


def _grow(selectors: list[_Selector], level: int) -> _Node:
    if level == len(_ATTRIBUTES):
        return _leaf(selectors)
    if all(selector.patterns[level] is None for selector in selectors):
        return _grow(selectors, level + 1)
    exact: dict[str, list[_Selector]] = {}
    prefixes: dict[str, list[_Selector]] = {}
    anything: list[_Selector] = []
    for selector in selectors:
        pattern = selector.patterns[level]
        if pattern is None:
            anything.append(selector)
        else:
            branch = prefixes if pattern.is_prefix else exact
            branch.setdefault(pattern.stem, []).append(selector)
    return _Fork(
        level,
        {value: _grow(group, level + 1) for value, group in exact.items()},
        {stem: _grow(group, level + 1) for stem, group in prefixes.items()},
        tuple(sorted({len(stem) for stem in prefixes})),
        _grow(anything, level + 1) if anything else None,
    )


def _leaf(selectors: list[_Selector]) -> _Leaf:
    # Key each selector by its most shared data path, so an event resolves few paths here.
    popularity = Counter(condition.path for selector in selectors for condition in selector.data)
    plain: list[_Selector] = []
    tables: dict[str, tuple[_DataCondition, dict[_Key, list[_Selector]]]] = {}
    for selector in selectors:
        if not selector.data:
            plain.append(selector)
            continue
        chosen = max(
            selector.data, key=lambda condition: (popularity[condition.path], condition.path)
        )
        table = tables.setdefault(chosen.path, (chosen, {}))[1]
        for key in chosen.accepted:
            table.setdefault(key, []).append(selector)
    keyed = tuple(
        (condition, {key: tuple(group) for key, group in table.items()})
        for condition, table in tables.values()
    )
    return _Leaf(tuple(plain), keyed)


def _leaves(root: _Node, values: tuple[str, ...]) -> Iterator[_Leaf]:
    pending = [root]
    while pending:
        node = pending.pop()
        if isinstance(node, _Leaf):
            yield node
            continue
        value = values[node.level]
        child = node.exact.get(value)
        if child is not None:
            pending.append(child)
        if value:
            size = len(value)
            for length in node.lengths:
                if length > size:
                    break
                child = node.prefixes.get(value[:length])
                if child is not None:
                    pending.append(child)
        if node.anything is not None:
            pending.append(node.anything)


def _filter_context(received: ReceivedEvent) -> dict[str, Any]:
    return {**received.event.expression_view(), "sensor": received.sensor}


class TriggerIndex:
    """Every event selector of a set of triggers, compiled and indexed for `match`."""

    __slots__ = ("_root", "_selectors", "_triggers")

    def __init__(self, selectors: list[_Selector], triggers: int) -> None:
        self._selectors = selectors
        self._root = _grow(selectors, 0)
        self._triggers = triggers

    @classmethod
    def build(cls, triggers: Iterable[Trigger]) -> TriggerIndex:
        """Compile every selector and filter once; raise ConfigError or ExpressionError naming
        the trigger and field of a selector that cannot work."""
        by_name: dict[str, Trigger] = {}
        for trigger in triggers:
            name = trigger.metadata.name
            if name in by_name:
                raise ConfigError(f"Trigger/{name}: defined twice; trigger names are unique")
            by_name[name] = trigger
        entries = sorted(
            (name, event_name, selector)
            for name, trigger in by_name.items()
            for event_name, selector in trigger.spec.events.items()
        )
        # sorted() never compares selectors: (trigger, event name) pairs are unique.
        selectors = [
            _compile(name, event_name, selector, order)
            for order, (name, event_name, selector) in enumerate(entries)
        ]
        return cls(selectors, len(by_name))

    def __len__(self) -> int:
        return self._triggers

    def match(self, received: ReceivedEvent) -> list[Verdict]:
        """The selectors whose indexed conditions admit the event: matched, or refused by
        their filter (false or failed), sorted by trigger and event name."""
        event = received.event
        values = (received.sensor, event.type, event.source, event.subject or "")
        admitted: list[_Selector] = []
        for leaf in _leaves(self._root, values):
            admitted.extend(leaf.plain)
            for condition, table in leaf.keyed:
                # Data is asked for only here: an intake worker's is read on first use, and
                # most events reach no data condition.
                data = event.data
                key = _key(condition.find(data))
                group = table.get(key) if key is not None else None
                if group is not None:
                    admitted.extend(selector for selector in group if selector.data_holds(data))
        if len(admitted) > 1:
            admitted.sort(key=_by_order)
        # The CEL context costs more than the index walk: build it only for a filter.
        needs_context = any(selector.filter is not None for selector in admitted)
        context = _filter_context(received) if needs_context else {}
        return [selector.judge(context) for selector in admitted]

    def explain(self, received: ReceivedEvent) -> list[Verdict]:
        """Every selector with its first failing condition (sensor, type, source, subject,
        data in key order, filter), sorted by trigger and event name."""
        event = received.event
        values = (received.sensor, event.type, event.source, event.subject or "")
        context = _filter_context(received)
        verdicts = []
        for selector in self._selectors:
            reason = selector.refusal(values, event.data)
            if reason is None:
                verdicts.append(selector.judge(context))
            else:
                verdicts.append(Verdict(selector.trigger, selector.event_name, False, reason))
        return verdicts


def _by_order(selector: _Selector) -> int:
    return selector.order
