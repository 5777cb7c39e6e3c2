"""Event templates: how a sensor makes a CloudEvent of a message that is not one.

A Sensor document may set `event.type`, `event.source`, `event.subject` and `event.id` as
`{{ CEL }}` text templates over what the sensor received (`body` for a webhook, `msg` for NATS,
`record` for Kafka). This module holds what every sensor shares: the pydantic field type that
compiles a template against the sensor's variables at load time, and the rendering of the four
attributes with each sensor's defaults. A template that fails on one message is that
message's problem, not the sensor's: the caller says which error it becomes (a 400 answer, a
poison event). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from eventflow.errors import ExpressionError
from eventflow.expressions import Template, compile_template


@dataclass(frozen=True, slots=True)
class TemplateOver:
    """`Annotated[Template, TemplateOver(variables, example)]`: a template field of a config.

    The field takes a string, compiles it once at load time and checks that it refers only to
    `variables`; it serializes back to the string. `example` shows the user the shape in errors.
    """

    variables: frozenset[str]
    example: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self._compile,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _source_of, return_schema=core_schema.str_schema()
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "description": f"text with {{{{ CEL }}}} parts, e.g. {self.example}",
        }

    def _compile(self, value: Any) -> Template:
        if isinstance(value, Template):
            return value
        if not isinstance(value, str):
            # ValueError, not TypeError: pydantic reports only ValueError as a validation problem.
            raise ValueError(f'a template is a string like "{self.example}", got {value!r}')
        try:
            return compile_template(value, self.variables)
        except ExpressionError as error:
            raise ValueError(str(error)) from error


def _source_of(template: Template) -> str:
    return template.source


class EventTemplates(Protocol):
    """The `event:` block of a sensor's config; None means the sensor's default."""

    @property
    def type(self) -> Template: ...

    @property
    def source(self) -> Template | None: ...

    @property
    def subject(self) -> Template | None: ...

    @property
    def id(self) -> Template | None: ...


@dataclass(frozen=True, slots=True)
class Defaults:
    """What a sensor uses for an attribute its config leaves untemplated."""

    source: str
    subject: str | None
    id: Callable[[], str]  # called only when no id template is set: it may draw a new UUID


@dataclass(frozen=True, slots=True)
class Attributes:
    type: str
    source: str
    subject: str | None
    id: str


def render_attributes(
    templates: EventTemplates,
    context: Mapping[str, Any],
    defaults: Defaults,
    *,
    what: str,
    failure: Callable[[str], Exception],
) -> Attributes:
    """Render the four attributes; `failure(reason)` is raised when a template fails.

    `what` names the thing received ("request", "record", "message") in the reason. An empty
    subject means no subject; an empty type, source or id is a failure, as CloudEvents require
    them non-empty.
    """

    def render(attribute: str, template: Template) -> str:
        try:
            return template.render(context)
        except ExpressionError as error:
            raise failure(
                f"event.{attribute}: the template {template.source!r} failed on this {what}:"
                f" {error}"
            ) from error

    def required(attribute: str, template: Template | None, default: Callable[[], str]) -> str:
        if template is None:
            return default()
        text = render(attribute, template)
        if not text:
            raise failure(
                f"event.{attribute}: the template {template.source!r} gave an empty string for"
                f" this {what}; a CloudEvent needs a non-empty {attribute}"
            )
        return text

    type_ = required("type", templates.type, str)
    source = required("source", templates.source, lambda: defaults.source)
    subject = (
        defaults.subject
        if templates.subject is None
        else render("subject", templates.subject) or None
    )
    return Attributes(
        type=type_, source=source, subject=subject, id=required("id", templates.id, defaults.id)
    )
