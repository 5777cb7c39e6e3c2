"""The HTTP API: webhooks, REST, health."""
