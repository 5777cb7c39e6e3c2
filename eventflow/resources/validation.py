"""Validating resources as a set: what no single document can check alone.

`load_resources` loads the files (`loading.py`), then checks names that refer to other
documents, sensor configs against their plugin, DAG shape, and compiles every expression and
template in the scope it will be evaluated in. It raises one `ResourceError` holding every
problem, sorted by file and line, so a user fixes them all in one pass.

It does not read files itself, start sensors or evaluate expressions on events.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from eventflow.errors import ExpressionError, Problem, ResourceError
from eventflow.expressions import compile_expression, compile_template
from eventflow.resources.describing import FieldPath, describe_errors, dotted
from eventflow.resources.loading import Located, load_documents
from eventflow.resources.models import Resource, Sensor, Trigger, WorkflowTemplate
from eventflow.resources.scopes import FILTER_VARIABLES, STEP_VARIABLES, TRIGGER_VARIABLES
from eventflow.sensing.protocol import SensorPlugin

T = TypeVar("T", Sensor, Trigger, WorkflowTemplate)


def _frozen(value: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True, slots=True)
class ResourceSet:
    """Every valid resource by name, and each sensor's config validated by its plugin."""

    sensors: Mapping[str, Located[Sensor]] = field(default_factory=_frozen)
    triggers: Mapping[str, Located[Trigger]] = field(default_factory=_frozen)
    workflows: Mapping[str, Located[WorkflowTemplate]] = field(default_factory=_frozen)
    sensor_configs: Mapping[str, BaseModel] = field(default_factory=_frozen)

    @classmethod
    def empty(cls) -> ResourceSet:
        return cls()


def load_resources(
    paths: Sequence[Path],
    plugins: Mapping[str, SensorPlugin],
    registered_sensors: Collection[str] | None = frozenset(),
) -> ResourceSet:
    """Load and check every resource under `paths`; raise ResourceError with all problems.

    A trigger may listen to a sensor that no file declares when it is one of
    `registered_sensors` (webhooks registered through the REST API). With None, references
    to undeclared sensors are not checked: the caller knows no registrations yet (the
    running service checks them against its store when it starts).
    """
    documents, problems = load_documents(paths)
    # Documents that failed to load still declare their name: a reference to them is not
    # reported again as "no such resource".
    report = _Report(problems, {problem.resource for problem in problems})
    sensors = _by_name(documents, Sensor, report)
    triggers = _by_name(documents, Trigger, report)
    workflows = _by_name(documents, WorkflowTemplate, report)
    configs = {
        name: config
        for name, located in sensors.items()
        if (config := _sensor_config(located, plugins, report)) is not None
    }
    for workflow in workflows.values():
        _check_workflow(workflow, report)
    for trigger in triggers.values():
        _check_trigger(trigger, sensors, registered_sensors, workflows, report)
    if report.problems:
        raise ResourceError(sorted(report.problems, key=lambda p: (p.file, p.line)))
    return ResourceSet(_frozen(sensors), _frozen(triggers), _frozen(workflows), _frozen(configs))


@dataclass(slots=True)
class _Report:
    problems: list[Problem]
    declared: set[str]  # "Kind/name" of the documents that failed to load

    def add(self, located: Located[Any], path: FieldPath, message: str) -> None:
        label = f"{located.resource.kind}/{located.resource.metadata.name}"
        self.problems.append(
            Problem(located.file, located.line_of(path), label, dotted(path), message)
        )

    def refer(
        self,
        located: Located[Any],
        path: FieldPath,
        name: str,
        existing: Mapping[str, Located[T]],
        *,
        kind: str,
    ) -> Located[T] | None:
        """The resource `name` refers to; a problem when no document declares it."""
        target = existing.get(name)
        if target is None and f"{kind}/{name}" not in self.declared:
            defined = f"defined: {', '.join(sorted(existing))}" if existing else "none is defined"
            self.add(located, path, f"no {kind} named {name!r}; {defined}")
        return target

    def compiles(
        self,
        located: Located[Any],
        path: FieldPath,
        compile_: Callable[[str, frozenset[str]], object],
        source: str,
        variables: frozenset[str],
    ) -> None:
        try:
            compile_(source, variables)
        except ExpressionError as error:
            self.add(located, path, str(error))


def _by_name(
    documents: Iterable[Located[Resource]], kind: type[T], report: _Report
) -> dict[str, Located[T]]:
    found: dict[str, Located[T]] = {}
    for located in documents:
        if not isinstance(located.resource, kind):
            continue
        name = located.resource.metadata.name
        first = found.get(name)
        if first is not None:
            report.add(
                located,
                ("metadata", "name"),
                f"duplicate name {name!r}: a {kind.__name__} of that name is already defined"
                f" at {first.file}:{first.line_of(('metadata', 'name'))}; rename one",
            )
        else:
            found[name] = cast("Located[T]", located)
    return found


def _sensor_config(
    located: Located[Sensor], plugins: Mapping[str, SensorPlugin], report: _Report
) -> BaseModel | None:
    kinds = sorted(located.resource.spec.model_extra or {})
    installed = (
        f"installed kinds: {', '.join(sorted(plugins))}"
        if plugins
        else ("no sensor kinds are installed")
    )
    if len(kinds) != 1:
        got = f"got {len(kinds)}: {', '.join(kinds)}" if kinds else "got none"
        report.add(
            located, ("spec",), f"expected exactly one key, the sensor kind; {got}; {installed}"
        )
        return None
    kind = kinds[0]
    plugin = plugins.get(kind)
    if plugin is None:
        report.add(located, ("spec", kind), f"unknown sensor kind {kind!r}; {installed}")
        return None
    raw = (located.resource.spec.model_extra or {})[kind]
    # `webhook:` with nothing after it is YAML null: the plugin's defaults are meant.
    data = {} if raw is None else raw
    model = plugin.config_model
    try:
        return model.model_validate(data)
    except ValidationError as error:
        for path, message in describe_errors(error, model, data, ("spec", kind)):
            report.add(located, path, message)
        return None


def _check_trigger(
    located: Located[Trigger],
    sensors: Mapping[str, Located[Sensor]],
    registered: Collection[str] | None,
    workflows: Mapping[str, Located[WorkflowTemplate]],
    report: _Report,
) -> None:
    spec = located.resource.spec
    path: FieldPath
    for event, selector in spec.events.items():
        at: FieldPath = ("spec", "events", event)
        name = selector.sensor
        if name is not None and registered is not None and name not in registered:
            report.refer(located, (*at, "sensor"), name, sensors, kind="Sensor")
        if selector.filter is not None:
            report.compiles(
                located, (*at, "filter"), compile_expression, selector.filter, FILTER_VARIABLES
            )
        selects = (selector.sensor, selector.type, selector.source, selector.subject)
        if all(value is None for value in selects) and not selector.data and not selector.filter:
            report.add(located, at, "matches every event; add at least a sensor or type")
    for argument, source in spec.arguments.items():
        path = ("spec", "arguments", argument)
        report.compiles(located, path, compile_template, source, TRIGGER_VARIABLES)
    if spec.policy.dedupe is not None:
        path = ("spec", "policy", "dedupe")
        report.compiles(located, path, compile_template, spec.policy.dedupe, TRIGGER_VARIABLES)
    workflow = report.refer(
        located, ("spec", "workflow"), spec.workflow, workflows, kind="WorkflowTemplate"
    )
    if workflow is None:
        return
    parameters = workflow.resource.spec.parameters
    names = [parameter.name for parameter in parameters]
    for argument in spec.arguments:
        if argument not in names:
            known = f"its parameters: {', '.join(names)}" if names else "it has no parameters"
            report.add(
                located,
                ("spec", "arguments", argument),
                f"unknown parameter {argument!r} of workflow {spec.workflow!r}; {known}",
            )
    for parameter in parameters:
        if parameter.default is None and parameter.name not in spec.arguments:
            report.add(
                located,
                ("spec", "arguments"),
                f"parameter {parameter.name!r} of workflow {spec.workflow!r} has no default;"
                " give it in arguments",
            )


def _check_workflow(located: Located[WorkflowTemplate], report: _Report) -> None:
    spec = located.resource.spec
    _unique(located, "parameters", [p.name for p in spec.parameters], "parameter", report)
    steps = [step.name for step in spec.steps]
    _unique(located, "steps", steps, "step", report)
    declared = set(steps)  # a list lookup per dependency is quadratic in long workflows
    for key, value in spec.env.items():
        _template(located, ("spec", "env", key), value, report)
    for index, step in enumerate(spec.steps):
        at: FieldPath = ("spec", "steps", index)
        for position, name in enumerate(step.depends):
            if name not in declared:
                report.add(
                    located,
                    (*at, "depends", position),
                    f"no step named {name!r} in this template; steps: {', '.join(steps)}",
                )
        if step.when is not None:
            report.compiles(located, (*at, "when"), compile_expression, step.when, STEP_VARIABLES)
        for part in ("command", "args"):
            for position, value in enumerate(getattr(step, part)):
                _template(located, (*at, part, position), value, report)
        for key, value in step.env.items():
            _template(located, (*at, "env", key), value, report)
        if step.workingDir is not None:
            _template(located, (*at, "workingDir"), step.workingDir, report)
        _env_set_twice(located, index, report)
    for index, cycle in _cycles(spec.steps):
        report.add(
            located,
            ("spec", "steps", index, "depends"),
            f"dependency cycle: {' -> '.join(cycle)}; each step waits for the next, so none"
            " can start",
        )


def _env_set_twice(located: Located[WorkflowTemplate], index: int, report: _Report) -> None:
    """A variable given both as a value and as a Secret/ConfigMap reference is ambiguous on
    the Kubernetes executor; refuse it here rather than when the step's Job is built."""
    spec = located.resource.spec
    step = spec.steps[index]
    refs = (spec.kubernetes.envRefs or {}) | (step.kubernetes.envRefs or {})
    for name in sorted((spec.env | step.env).keys() & refs.keys()):
        at: FieldPath = ("spec", "steps", index, "env", name)
        if name not in step.env:
            at = ("spec", "env", name)
        report.add(
            located,
            at,
            f"{name} is set both as a value (env) and as a reference (kubernetes.envRefs)"
            f" for step {step.name!r}; keep one of them",
        )


def _template(located: Located[Any], path: FieldPath, source: str, report: _Report) -> None:
    report.compiles(located, path, compile_template, source, STEP_VARIABLES)


def _unique(located: Located[Any], part: str, names: list[str], noun: str, report: _Report) -> None:
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            report.add(
                located,
                ("spec", part, index, "name"),
                f"duplicate {noun} name {name!r}; first at spec.{part}[{first[name]}]",
            )
        else:
            first[name] = index


def _cycles(steps: Sequence[Any]) -> list[tuple[int, list[str]]]:
    """Each dependency cycle once, as (index of its first step, names around it)."""
    index = {step.name: position for position, step in enumerate(steps)}
    depends = {step.name: [name for name in step.depends if name in index] for step in steps}
    done: set[str] = set()
    found: dict[frozenset[str], tuple[int, list[str]]] = {}
    # Depth-first with an explicit stack: a chain of thousands of steps would pass Python's
    # recursion limit. `trail` is the path from the root, `pending` the dependencies each
    # step on it has left to visit, `on_trail` where each step sits in the trail.
    for step in steps:
        if step.name in done:
            continue
        trail = [step.name]
        on_trail = {step.name: 0}
        pending = [iter(depends[step.name])]
        while pending:
            dependency = next(pending[-1], None)
            if dependency is None:
                pending.pop()
                finished = trail.pop()
                del on_trail[finished]
                done.add(finished)
            elif dependency in on_trail:
                loop = trail[on_trail[dependency] :]
                start = min(loop, key=index.__getitem__)
                turn = loop.index(start)
                ordered = loop[turn:] + loop[:turn]
                found.setdefault(frozenset(loop), (index[start], [*ordered, start]))
            elif dependency not in done:
                on_trail[dependency] = len(trail)
                trail.append(dependency)
                pending.append(iter(depends[dependency]))
    return sorted(found.values())
