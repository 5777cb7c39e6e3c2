"""Sensors: the plugin protocol, discovery through entry points, and intake."""
