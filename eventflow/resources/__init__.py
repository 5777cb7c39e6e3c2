"""The YAML resources (Sensor, Trigger, WorkflowTemplate): models, loading, validation."""
