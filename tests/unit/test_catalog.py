"""The engine's compiled view of triggers: how a matched event becomes a new run."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eventflow.engine.catalog import TriggerRule, event_context
from eventflow.errors import ExpressionError
from eventflow.events import Event, ReceivedEvent
from eventflow.resources.models import Trigger, WorkflowTemplate

WORKFLOW = WorkflowTemplate.model_validate(
    {
        "apiVersion": "eventflow.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "etl"},
        "spec": {
            "parameters": [{"name": "key"}, {"name": "mode", "default": "full"}],
            "steps": [
                {"name": "extract", "command": ["echo"]},
                {"name": "load", "command": ["echo"], "depends": ["extract"]},
            ],
        },
    }
)


def trigger(**spec: object) -> Trigger:
    return Trigger.model_validate(
        {
            "apiVersion": "eventflow.io/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "on-upload"},
            "spec": {"events": {"upload": {"sensor": "uploads"}}, "workflow": "etl", **spec},
        }
    )


RECEIVED = ReceivedEvent(
    Event(id="e-1", source="/store", type="object.created", data={"key": "a.csv", "etag": "x1"}),
    "uploads",
    datetime(2026, 1, 1, tzinfo=UTC),
)


def test_new_run_renders_arguments_over_parameter_defaults():
    """Arguments come from templates; parameters the trigger leaves out keep their default."""
    rule = TriggerRule.compile(trigger(arguments={"key": "{{ events.upload.data.key }}"}), WORKFLOW)
    run = rule.new_run("upload", RECEIVED, "run-1")
    assert run.arguments == {"mode": "full", "key": "a.csv"}
    assert (run.id, run.trigger, run.workflow) == ("run-1", "on-upload", "etl")
    assert run.step_names == ("extract", "load")
    assert run.workflow_spec["steps"][1]["depends"] == ["extract"]


def test_default_dedupe_key_is_source_and_id():
    """Without a dedupe policy, a redelivery of the same CloudEvent (source + id) is the key."""
    run = TriggerRule.compile(trigger(), WORKFLOW).new_run("upload", RECEIVED, "run-1")
    assert run.dedupe_key == "/store#e-1"


def test_dedupe_template_sets_the_key():
    """A dedupe template makes different events with the same content one run."""
    rule = TriggerRule.compile(
        trigger(policy={"dedupe": "{{ events.upload.data.key }}@{{ events.upload.data.etag }}"}),
        WORKFLOW,
    )
    assert rule.new_run("upload", RECEIVED, "run-1").dedupe_key == "a.csv@x1"


def test_argument_that_fails_names_the_argument():
    """A template failing on this event raises an ExpressionError naming the argument."""
    rule = TriggerRule.compile(
        trigger(arguments={"key": "{{ events.upload.data.size }}"}), WORKFLOW
    )
    with pytest.raises(ExpressionError) as caught:
        rule.new_run("upload", RECEIVED, "run-1")
    assert str(caught.value) == "arguments.key: 'events.upload.data.size': no such key: size"


def test_concurrency_limit_is_carried():
    """The trigger's concurrency limit is on the rule, None without a policy."""
    limited = TriggerRule.compile(trigger(policy={"concurrency": {"limit": 3}}), WORKFLOW)
    assert limited.concurrency_limit == 3
    assert TriggerRule.compile(trigger(), WORKFLOW).concurrency_limit is None


def test_event_context_exposes_attributes_and_sensor():
    """Templates see the event's attributes, its data and the sensor under events.<name>."""
    context = event_context("upload", RECEIVED, "on-upload")
    assert context["trigger"] == {"name": "on-upload"}
    assert context["events"]["upload"]["sensor"] == "uploads"
    assert context["events"]["upload"]["subject"] == ""
    assert context["events"]["upload"]["data"] == {"key": "a.csv", "etag": "x1"}
