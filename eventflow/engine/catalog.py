"""The loaded resources, compiled for the hot path: the trigger index, and for each trigger
the templates that turn a matched event into a new run.

Pure: it renders templates and builds `NewRun` records; it does not store or start them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eventflow.engine.matching import TriggerIndex
from eventflow.errors import ExpressionError
from eventflow.events import ReceivedEvent
from eventflow.expressions import Template, compile_template
from eventflow.resources.models import Trigger, WorkflowTemplate
from eventflow.resources.scopes import TRIGGER_VARIABLES
from eventflow.resources.validation import ResourceSet
from eventflow.store.records import NewRun


def new_run_id() -> str:
    """Short, unique, and sortable by creation time: milliseconds then 24 random bits."""
    return f"{int(time.time() * 1000):011x}{os.urandom(3).hex()}"


def event_context(name: str, received: ReceivedEvent, trigger: str) -> dict[str, Any]:
    """The variables of trigger templates (see resources/scopes.py)."""
    view = received.event.expression_view()
    view["sensor"] = received.sensor
    return {"events": {name: view}, "trigger": {"name": trigger}}


@dataclass(frozen=True, slots=True)
class TriggerRule:
    name: str
    workflow: WorkflowTemplate
    arguments: Mapping[str, Template]
    dedupe: Template | None
    concurrency_limit: int | None

    @classmethod
    def compile(cls, trigger: Trigger, workflow: WorkflowTemplate) -> TriggerRule:
        spec = trigger.spec
        return cls(
            name=trigger.metadata.name,
            workflow=workflow,
            arguments={
                key: compile_template(value, TRIGGER_VARIABLES)
                for key, value in spec.arguments.items()
            },
            dedupe=(
                compile_template(spec.policy.dedupe, TRIGGER_VARIABLES)
                if spec.policy.dedupe
                else None
            ),
            concurrency_limit=spec.policy.concurrency.limit if spec.policy.concurrency else None,
        )

    def new_run(self, event_name: str, received: ReceivedEvent, run_id: str) -> NewRun:
        """The run this event starts; ExpressionError names the template that failed."""
        context = event_context(event_name, received, self.name)
        arguments = {
            parameter.name: parameter.default
            for parameter in self.workflow.spec.parameters
            if parameter.default is not None
        }
        for key, template in self.arguments.items():
            try:
                arguments[key] = template.render(context)
            except ExpressionError as error:
                raise ExpressionError(f"arguments.{key}: {error}") from error
        if self.dedupe is None:
            # CloudEvents: source + id identify an event.
            dedupe_key = f"{received.event.source}#{received.event.id}"
        else:
            try:
                dedupe_key = self.dedupe.render(context)
            except ExpressionError as error:
                raise ExpressionError(f"policy.dedupe: {error}") from error
        return NewRun(
            id=run_id,
            trigger=self.name,
            workflow=self.workflow.metadata.name,
            dedupe_key=dedupe_key,
            arguments=arguments,
            workflow_spec=self.workflow.spec.model_dump(mode="json", by_alias=True),
            step_names=tuple(step.name for step in self.workflow.spec.steps),
        )


@dataclass(frozen=True, slots=True)
class Catalog:
    resources: ResourceSet
    index: TriggerIndex
    rules: Mapping[str, TriggerRule]

    @classmethod
    def build(cls, resources: ResourceSet) -> Catalog:
        triggers = [located.resource for located in resources.triggers.values()]
        return cls(
            resources=resources,
            index=TriggerIndex.build(triggers),
            rules={
                trigger.metadata.name: TriggerRule.compile(
                    trigger, resources.workflows[trigger.spec.workflow].resource
                )
                for trigger in triggers
            },
        )
