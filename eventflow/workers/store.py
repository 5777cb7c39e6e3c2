"""What a worker keeps in the main process, through the channel: its sensors' state and rate
limits, and the list of registered webhooks it reads at each (re)load.

A webhook's redelivery ledger must be one for all the processes that answer its deliveries,
and must outlive them: it is the store's. The workers do not open the store themselves: on
SQLite two processes writing one file wait for each other's locks in the database's busy
handler, sleeping milliseconds at a time. So `ChannelSensorState` sends each of the four
calls everything else is built on (`read_spaces`, `write_spaces`, `scan`, `purge_expired`)
to the main process, whose store runs it like any sensor's call, and `ChannelWebhooks` asks
it for the registered webhooks. `ChannelRateLimits` takes a sensor's tokens from the main
process's bucket, one for all the workers answering that sensor. `serve_store` is the main
process's end.

A request is JSON: `{"sensor", "op": "read", "keys": {space: [key]}}`, `{"sensor", "op":
"write", "writes": [{"space", "put", "expires_at", "delete"}]}`, `{"sensor", "op": "scan",
"space", "prefix", "after", "limit"}`, `{"sensor", "op": "purge", "now"}`, `{"op":
"webhooks"}`, `{"op": "limit", "key", "per_second", "burst", "now"}`; times are RFC 3339,
but a limit's `now` is seconds, as the buckets count them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from eventflow.errors import TemporaryError
from eventflow.events import format_time, parse_time
from eventflow.reloading import RegisteredWebhooks
from eventflow.sensing.limiting import RateLimits
from eventflow.sensing.protocol import SensorState, SpaceWrite
from eventflow.sensing.state import SpacesState, check_scan_limit, check_space
from eventflow.store.webhooks import RegisteredWebhook
from eventflow.workers.channel import ChannelClosedError, RequestFailedError, Serve

Request = Callable[[bytes], Awaitable[bytes]]


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def _parsed(value: str | None) -> datetime | None:
    return None if value is None else parse_time(value)


async def _ask(request: Request, what: str, **arguments: Any) -> Any:
    try:
        return orjson.loads(await request(orjson.dumps(arguments)))
    except (RequestFailedError, ChannelClosedError) as error:
        raise TemporaryError(f"{what}, kept by the main process: {error}") from error


class ChannelWebhooks:
    """The registered webhooks, as the main process's store lists them."""

    def __init__(self, request: Request) -> None:
        self._request = request

    async def list_all(self) -> list[RegisteredWebhook]:
        listed = await _ask(self._request, "registered webhooks", op="webhooks")
        return [
            RegisteredWebhook(
                name=item["name"],
                path=item["path"],
                spec=item["spec"],
                created_at=parse_time(item["created_at"]),
                updated_at=parse_time(item["updated_at"]),
            )
            for item in listed
        ]


class ChannelRateLimits:
    """Tokens from the main process's buckets."""

    def __init__(self, request: Request) -> None:
        self._request = request

    async def take(self, key: str, per_second: float, burst: int, now: float) -> float:
        wait: float = await _ask(
            self._request,
            "rate limit",
            op="limit",
            key=key,
            per_second=per_second,
            burst=burst,
            now=now,
        )
        return wait


class ChannelSensorState(SpacesState):
    """The state of sensor `sensor`, read and written by the main process."""

    def __init__(self, sensor: str, request: Request) -> None:
        self._sensor = sensor
        self._request = request

    async def _ask(self, op: str, **arguments: Any) -> Any:
        return await _ask(self._request, "sensor state", sensor=self._sensor, op=op, **arguments)

    async def read_spaces(self, keys: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        for space in keys:
            check_space(space)
        found: dict[str, dict[str, str]] = await self._ask(
            "read", keys={space: list(names) for space, names in keys.items()}
        )
        return found

    async def write_spaces(self, writes: Sequence[SpaceWrite]) -> None:
        for write in writes:
            check_space(write.space)
        await self._ask(
            "write",
            writes=[
                {
                    "space": write.space,
                    "put": dict(write.put),
                    "expires_at": _time(write.expires_at),
                    "delete": list(write.delete),
                }
                for write in writes
            ],
        )

    async def scan(
        self, space: str, *, prefix: str = "", after: str | None = None, limit: int = 1000
    ) -> list[tuple[str, str]]:
        check_space(space)
        check_scan_limit(limit)
        pairs = await self._ask("scan", space=space, prefix=prefix, after=after, limit=limit)
        return [(key, value) for key, value in pairs]

    async def purge_expired(self, now: datetime) -> int:
        purged: int = await self._ask("purge", now=format_time(now))
        return purged


def serve_store(
    state_of: Callable[[str], SensorState],
    registered: Callable[[], RegisteredWebhooks],
    limits: RateLimits,
) -> Serve:
    """The main process's end: run a worker's request on the store's state of its sensor, list
    the registered webhooks, or take a token from `limits`."""

    async def serve(payload: bytes) -> bytes:
        request = orjson.loads(payload)
        op = request["op"]
        if op == "limit":
            wait = await limits.take(
                request["key"], request["per_second"], request["burst"], request["now"]
            )
            return orjson.dumps(wait)
        if op == "webhooks":
            return orjson.dumps(
                [
                    {
                        "name": record.name,
                        "path": record.path,
                        "spec": record.spec,
                        "created_at": format_time(record.created_at),
                        "updated_at": format_time(record.updated_at),
                    }
                    for record in await registered().list_all()
                ]
            )
        state = state_of(request["sensor"])
        if op == "read":
            return orjson.dumps(await state.read_spaces(request["keys"]))
        if op == "write":
            writes = [
                SpaceWrite(
                    write["space"], write["put"], _parsed(write["expires_at"]), write["delete"]
                )
                for write in request["writes"]
            ]
            await state.write_spaces(writes)
            return b"null"
        if op == "scan":
            pairs = await state.scan(
                request["space"],
                prefix=request["prefix"],
                after=request["after"],
                limit=request["limit"],
            )
            return orjson.dumps(pairs)
        if op == "purge":
            return orjson.dumps(await state.purge_expired(parse_time(request["now"])))
        raise ValueError(f"unknown sensor state request {op!r}")

    return serve
