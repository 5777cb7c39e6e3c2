"""The pure parts of bringing a bus up: backoff delays and the /readyz reason."""

from __future__ import annotations

from itertools import islice

from eventflow.bus.connecting import backoff_delays, unavailable_reason

URL = "nats://127.0.0.1:4999"


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    """Delays double each attempt and stay at the cap once they reach it."""
    assert list(islice(backoff_delays(0.5, 5.0), 7)) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_never_starts_above_the_cap() -> None:
    """An initial delay larger than the cap is cut to the cap."""
    assert list(islice(backoff_delays(10.0, 3.0), 2)) == [3.0, 3.0]


def test_reason_names_the_url_and_the_last_connection_error() -> None:
    """A bus that never came up is reported with its URL and why the last attempt failed."""
    reason = unavailable_reason(URL, up=False, connected=False, last_error="refused")
    assert reason == f"bus {URL} unreachable: refused"


def test_reason_before_the_first_attempt_finished_says_connecting() -> None:
    """Before any attempt failed, the reason says the bus is connecting."""
    assert unavailable_reason(URL, False, False, None) == f"bus {URL} unreachable: connecting"


def test_reason_for_a_bus_that_lost_its_broker() -> None:
    """A started bus whose broker went away is reported as reconnecting."""
    reason = unavailable_reason(URL, up=True, connected=False, last_error=None)
    assert reason == f"bus {URL} unreachable: connection lost, reconnecting"


def test_no_reason_when_started_and_connected() -> None:
    """A started, connected bus takes events: no reason."""
    assert unavailable_reason(URL, up=True, connected=True, last_error=None) is None
