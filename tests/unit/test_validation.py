"""Validating resources as a set: references, sensor configs, DAGs and expressions."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from eventflow.errors import ResourceError
from eventflow.resources.validation import ResourceSet, load_resources
from eventflow.sensing.protocol import Sensor, SensorPlugin

HEAD = "apiVersion: eventflow.io/v1alpha1\n"
SENSOR = HEAD + "kind: Sensor\nmetadata: {name: hook}\nspec:\n  webhook: {path: github}\n"
WORKFLOW = (
    HEAD + "kind: WorkflowTemplate\nmetadata: {name: etl}\nspec:\n"
    "  parameters: [{name: key}, {name: mode, default: fast}]\n"
    "  steps:\n"
    "    - {name: extract, command: [run, '{{ params.key }}']}\n"
    "    - {name: load, depends: [extract], command: [load]}\n"
)
TRIGGER = (
    HEAD + "kind: Trigger\nmetadata: {name: on-push}\nspec:\n"
    "  events: {push: {sensor: hook, filter: 'data.size > 0'}}\n"
    "  workflow: etl\n"
    "  arguments: {key: '{{ events.push.data.key }}'}\n"
)


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    maxBodyBytes: int = 1048576


class WebhookPlugin:
    @property
    def config_model(self) -> type[BaseModel]:
        return WebhookConfig

    def create(self, name: str, config: BaseModel) -> Sensor:
        raise NotImplementedError


PLUGINS: Mapping[str, SensorPlugin] = {"webhook": WebhookPlugin()}


def write(directory: Path, name: str, *documents: str) -> Path:
    path = directory / name
    path.write_text("---\n".join(textwrap.dedent(d) for d in documents), encoding="utf-8")
    return path


def problems(tmp_path: Path, *documents: str) -> list[str]:
    """The problem lines of one file holding `documents`, with the file name cut to f.yaml."""
    write(tmp_path, "f.yaml", *documents)
    with pytest.raises(ResourceError) as caught:
        load_resources([tmp_path], PLUGINS)
    return [str(p).removeprefix(f"{tmp_path}/") for p in caught.value.problems]


def test_clean_directory_loads_into_a_resource_set(tmp_path: Path) -> None:
    """Valid documents across files load by name, with each sensor config validated."""
    write(tmp_path, "a.yaml", SENSOR, TRIGGER)
    write(tmp_path, "b.yml", WORKFLOW)
    resources = load_resources([tmp_path], PLUGINS)
    assert list(resources.sensors) == ["hook"]
    assert list(resources.triggers) == ["on-push"]
    assert list(resources.workflows) == ["etl"]
    assert resources.sensor_configs["hook"] == WebhookConfig(path="github")
    assert resources.triggers["on-push"].line == 7


def test_empty_resource_set_has_nothing() -> None:
    """ResourceSet.empty() holds no resources."""
    empty = ResourceSet.empty()
    assert (dict(empty.sensors), dict(empty.triggers), dict(empty.workflows)) == ({}, {}, {})
    assert dict(empty.sensor_configs) == {}


def test_duplicate_name_names_the_first(tmp_path: Path) -> None:
    """A second resource of one kind with the same name points at the first."""
    assert problems(tmp_path, WORKFLOW, WORKFLOW) == [
        "f.yaml:12: WorkflowTemplate/etl: metadata.name: duplicate name 'etl': a"
        f" WorkflowTemplate of that name is already defined at {tmp_path}/f.yaml:3; rename one"
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "{}",
            "spec: expected exactly one key, the sensor kind; got none; installed kinds: webhook",
        ),
        (
            "{webhook: {path: a}, kafka: {}}",
            "spec: expected exactly one key, the sensor kind; got 2: kafka, webhook;"
            " installed kinds: webhook",
        ),
        ("{kafka: {}}", "spec.kafka: unknown sensor kind 'kafka'; installed kinds: webhook"),
        (
            "{webhook: {path: a, maxBodyBytes: lots}}",
            "spec.webhook.maxBodyBytes: expected an integer, got 'lots'",
        ),
        (
            "{webhook: {path: a, max: 1}}",
            "spec.webhook.max: unknown field 'max'; known fields: path, maxBodyBytes",
        ),
        ("{webhook: }", "spec.webhook.path: required field missing"),
        ("{webhook: [a]}", 'spec.webhook: expected a mapping, got ["a"]'),
    ],
)
def test_sensor_spec_problems(tmp_path: Path, spec: str, expected: str) -> None:
    """A sensor spec names one installed kind whose plugin validates its config."""
    sensor = HEAD + f"kind: Sensor\nmetadata: {{name: hook}}\nspec: {spec}\n"
    assert problems(tmp_path, sensor) == [f"f.yaml:4: Sensor/hook: {expected}"]


def test_no_plugins_installed_says_so(tmp_path: Path) -> None:
    """With no plugins the message says none is installed."""
    write(tmp_path, "f.yaml", SENSOR)
    with pytest.raises(ResourceError) as caught:
        load_resources([tmp_path], {})
    assert str(caught.value) == (
        f"{tmp_path}/f.yaml:5: Sensor/hook: spec.webhook: unknown sensor kind 'webhook';"
        " no sensor kinds are installed"
    )


def trigger(events: str, rest: str = "  workflow: etl\n  arguments: {key: k}\n") -> str:
    return HEAD + f"kind: Trigger\nmetadata: {{name: t}}\nspec:\n  events: {events}\n" + rest


@pytest.mark.parametrize(
    ("events", "rest", "expected"),
    [
        (
            "{e: {sensor: nope}}",
            "  workflow: etl\n  arguments: {key: k}\n",
            "f.yaml:20: Trigger/t: spec.events.e.sensor: no Sensor named 'nope'; defined: hook",
        ),
        (
            "{e: {type: a}}",
            "  workflow: nope\n",
            "f.yaml:21: Trigger/t: spec.workflow: no WorkflowTemplate named 'nope'; defined: etl",
        ),
        (
            "{e: {filter: 'data.x >'}}",
            "  workflow: etl\n  arguments: {key: k}\n",
            None,
        ),
        (
            "{e: {filter: 'body.x > 1'}}",
            "  workflow: etl\n  arguments: {key: k}\n",
            "f.yaml:20: Trigger/t: spec.events.e.filter: 'body.x > 1' refers to body, which is"
            " not defined here; available: data, datacontenttype, extensions, id, sensor,"
            " source, subject, time, type",
        ),
        (
            "{e: {type: a}}",
            "  workflow: etl\n  arguments: {key: '{{ data.key }}'}\n",
            "f.yaml:22: Trigger/t: spec.arguments.key: 'data.key' refers to data, which is not"
            " defined here; available: events, trigger",
        ),
        (
            "{e: {type: a}}",
            "  workflow: etl\n  arguments: {key: k}\n  policy: {dedupe: '{{ id }}'}\n",
            "f.yaml:23: Trigger/t: spec.policy.dedupe: 'id' refers to id, which is not defined"
            " here; available: events, trigger",
        ),
        (
            "{e: {type: a}}",
            "  workflow: etl\n  arguments: {key: k, colour: red}\n",
            "f.yaml:22: Trigger/t: spec.arguments.colour: unknown parameter 'colour' of"
            " workflow 'etl'; its parameters: key, mode",
        ),
        (
            "{e: {type: a}}",
            "  workflow: etl\n",
            "f.yaml:19: Trigger/t: spec.arguments: parameter 'key' of workflow 'etl' has no"
            " default; give it in arguments",
        ),
        (
            "{e: {data: {}}}",
            "  workflow: etl\n  arguments: {key: k}\n",
            "f.yaml:20: Trigger/t: spec.events.e: matches every event; add at least a sensor"
            " or type",
        ),
    ],
)
def test_trigger_problems(tmp_path: Path, events: str, rest: str, expected: str | None) -> None:
    """Each trigger check reports one exact problem at the offending field."""
    found = problems(tmp_path, SENSOR, WORKFLOW, trigger(events, rest))
    if expected is None:
        assert len(found) == 1
        assert found[0].startswith(
            "f.yaml:20: Trigger/t: spec.events.e.filter: 'data.x >' is not valid CEL:"
        )
    else:
        assert found == [expected]


def workflow(steps: str, extra: str = "") -> str:
    return HEAD + f"kind: WorkflowTemplate\nmetadata: {{name: w}}\nspec:\n{extra}  steps:\n{steps}"


@pytest.mark.parametrize(
    ("steps", "extra", "expected"),
    [
        (
            "    - {name: a, command: [x]}\n    - {name: a, command: [y]}\n",
            "",
            [
                "f.yaml:7: WorkflowTemplate/w: spec.steps[1].name: duplicate step name 'a';"
                " first at spec.steps[0]"
            ],
        ),
        (
            "    - {name: a, command: [x], depends: [b]}\n",
            "",
            [
                "f.yaml:6: WorkflowTemplate/w: spec.steps[0].depends[0]: no step named 'b' in"
                " this template; steps: a"
            ],
        ),
        (
            "    - {name: a, command: [x], depends: [c]}\n"
            "    - {name: b, command: [x], depends: [a]}\n"
            "    - {name: c, command: [x], depends: [b]}\n"
            "    - {name: d, command: [x], depends: [d]}\n",
            "",
            [
                "f.yaml:6: WorkflowTemplate/w: spec.steps[0].depends: dependency cycle:"
                " a -> c -> b -> a; each step waits for the next, so none can start",
                "f.yaml:9: WorkflowTemplate/w: spec.steps[3].depends: dependency cycle:"
                " d -> d; each step waits for the next, so none can start",
            ],
        ),
        (
            "    - {name: a, command: [x], when: 'event.ok'}\n",
            "",
            [
                "f.yaml:6: WorkflowTemplate/w: spec.steps[0].when: 'event.ok' refers to event,"
                " which is not defined here; available: params, run, steps"
            ],
        ),
        (
            "    - name: a\n      command: ['{{ x }}']\n      args: [ok, '{{ y }}']\n"
            "      env: {E: '{{ z'}\n      workingDir: '{{ w }}'\n",
            "  env: {G: '{{ g }}'}\n",
            [
                "f.yaml:5: WorkflowTemplate/w: spec.env.G: 'g' refers to g, which is not defined"
                " here; available: params, run, steps",
                "f.yaml:8: WorkflowTemplate/w: spec.steps[0].command[0]: 'x' refers to x, which"
                " is not defined here; available: params, run, steps",
                "f.yaml:9: WorkflowTemplate/w: spec.steps[0].args[1]: 'y' refers to y, which is"
                " not defined here; available: params, run, steps",
                "f.yaml:10: WorkflowTemplate/w: spec.steps[0].env.E: '{{ z': '{{' without a"
                " closing '}}'",
                "f.yaml:11: WorkflowTemplate/w: spec.steps[0].workingDir: 'w' refers to w, which"
                " is not defined here; available: params, run, steps",
            ],
        ),
        (
            "    - name: a\n      command: [x]\n      env: {DB: x}\n"
            "    - name: b\n      command: [x]\n"
            "      kubernetes: {envRefs: {TOKEN: {secret: t, key: k}}}\n"
            "    - {name: c, command: [x]}\n",
            "  env: {TOKEN: plain}\n  kubernetes: {envRefs: {DB: {secret: db, key: password}}}\n",
            [
                "f.yaml:5: WorkflowTemplate/w: spec.env.TOKEN: TOKEN is set both as a value"
                " (env) and as a reference (kubernetes.envRefs) for step 'b'; keep one of them",
                "f.yaml:10: WorkflowTemplate/w: spec.steps[0].env.DB: DB is set both as a value"
                " (env) and as a reference (kubernetes.envRefs) for step 'a'; keep one of them",
            ],
        ),
        (
            "    - {name: a, command: [x]}\n",
            "  parameters: [{name: p}, {name: p}]\n",
            [
                "f.yaml:5: WorkflowTemplate/w: spec.parameters[1].name: duplicate parameter name"
                " 'p'; first at spec.parameters[0]"
            ],
        ),
    ],
)
def test_workflow_problems(tmp_path: Path, steps: str, extra: str, expected: list[str]) -> None:
    """Each workflow check reports exact problems at the offending field."""
    assert problems(tmp_path, workflow(steps, extra)) == expected


def chain(length: int, *, closed: bool) -> str:
    """Steps s0..s{length-1}, each depending on the next; the last on s0 when `closed`."""
    lines = [
        f"    - {{name: s{i}, command: [x], depends: [s{i + 1}]}}\n" for i in range(length - 1)
    ]
    last = " depends: [s0]" if closed else ""
    return "".join(lines) + f"    - {{name: s{length - 1}, command: [x],{last}}}\n"


def test_chain_of_5000_steps_is_valid_without_reaching_the_recursion_limit(
    tmp_path: Path,
) -> None:
    """A 5,000-step dependency chain loads: the cycle search does not recurse per step."""
    write(tmp_path, "f.yaml", workflow(chain(5000, closed=False)))
    steps = load_resources([tmp_path], PLUGINS).workflows["w"].resource.spec.steps
    assert (len(steps), steps[0].depends, steps[-1].depends) == (5000, ["s1"], [])


def test_cycle_through_5000_steps_is_reported_once(tmp_path: Path) -> None:
    """A cycle through 5,000 steps is one problem, at its first step, naming every step."""
    around = " -> ".join(f"s{i}" for i in [*range(5000), 0])
    assert problems(tmp_path, workflow(chain(5000, closed=True))) == [
        f"f.yaml:6: WorkflowTemplate/w: spec.steps[0].depends: dependency cycle: {around};"
        " each step waits for the next, so none can start"
    ]


def test_problems_across_files_are_all_reported_sorted(tmp_path: Path) -> None:
    """Problems of two files, from loading and from checks, come together sorted."""
    write(tmp_path, "b.yaml", trigger("{e: {sensor: gone}}", "  workflow: etl\n"))
    write(tmp_path, "a.yaml", WORKFLOW.replace("{name: load,", "{name: load, retrys: 1,"), SENSOR)
    with pytest.raises(ResourceError) as caught:
        load_resources([tmp_path], PLUGINS)
    assert [str(p).removeprefix(f"{tmp_path}/") for p in caught.value.problems] == [
        "a.yaml:8: WorkflowTemplate/etl: spec.steps[1].retrys: unknown field 'retrys';"
        " known fields:"
        " name, image, command, args, env, workingDir, depends, when, retries, timeout,"
        " kubernetes",
        "b.yaml:5: Trigger/t: spec.events.e.sensor: no Sensor named 'gone'; defined: hook",
    ]


def test_syntax_error_does_not_hide_problems_elsewhere(tmp_path: Path) -> None:
    """A YAML syntax error in one file and a check problem in another are both reported."""
    write(tmp_path, "a.yaml", "a: [\n")
    write(tmp_path, "b.yaml", SENSOR.replace("path: github", "path: 1"))
    with pytest.raises(ResourceError) as caught:
        load_resources([tmp_path], PLUGINS)
    assert [str(p).removeprefix(f"{tmp_path}/") for p in caught.value.problems] == [
        "a.yaml:2: -: invalid YAML: expected the node content, but found '<stream end>' (column 1)",
        "b.yaml:5: Sensor/hook: spec.webhook.path: expected a string, got 1",
    ]
