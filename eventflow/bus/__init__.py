"""The event bus: sensors publish received events, the engine consumes them."""
