"""The trigger engine: match events to triggers, correlate, apply policies, dispatch runs."""
