"""The built-in sensor plugins, registered under the eventflow.sensors entry-point group."""
