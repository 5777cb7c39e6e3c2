"""Intake workers: processes that answer webhooks beside the main eventflow process."""
