"""Which variables each place in a resource offers to CEL and `{{ }}` templates.

A reference to anything else is an error when the resources are loaded, not when an event
arrives.
"""

from __future__ import annotations

# Trigger `events.<name>.filter`: the event's attributes at the top level.
#   id, source, type, subject (""), time (timestamp or null), datacontenttype (""),
#   data (the JSON value), extensions (map), sensor (name of the sensor that heard it)
FILTER_VARIABLES = frozenset(
    {"id", "source", "type", "subject", "time", "datacontenttype", "data", "extensions", "sensor"}
)

# Trigger `arguments` values and `policy.dedupe`:
#   events.<name>: the matched event, with the attributes above; trigger: {name}
TRIGGER_VARIABLES = frozenset({"events", "trigger"})

# WorkflowTemplate step `command`, `args`, `env` values, `workingDir` and `when`:
#   params.<name>: the run's arguments (parameter defaults applied), strings
#   steps.<name>: {state, exitCode, outputs (map)} of steps that ended
#   run: {id, trigger, workflow, eventId}
STEP_VARIABLES = frozenset({"params", "steps", "run"})
