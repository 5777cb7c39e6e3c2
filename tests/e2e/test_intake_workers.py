"""`eventflow serve --intake-workers N` as a user runs it: N processes answer the webhooks on
the listener, the main process runs the engine and answers the REST API through them.

What must hold: a change of the sensors (a webhook registered, removed) is served by every
worker once the API answered; a worker that dies is replaced while the others keep answering;
the workers never outlive the main process; a SIGTERM answers the deliveries in flight before
everything stops; bad deliveries store nothing; on NATS the workers publish to JetStream
themselves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.brokers import own_nats, running
from tests.conftest import FIXTURES, free_port, github_signed
from tests.e2e.test_cli import ServerProcess, cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SECRET = "intake-workers-secret"
GITHUB_SENSOR = textwrap.dedent(
    """\
    apiVersion: eventflow.io/v1alpha1
    kind: Sensor
    metadata: {name: github}
    spec:
      webhook:
        path: github
        auth: {preset: github, secrets: [{env: WORKERS_GITHUB_SECRET}]}
        event:
          type: "com.github.{{ headers['x-github-event'] }}"
          source: https://github.com
          id: "{{ headers['x-github-delivery'] }}"
    """
)
PUSH = (FIXTURES / "github" / "push--payload.json").read_bytes()


def signed(body: bytes, delivery: str) -> dict[str, str]:
    return github_signed(SECRET, delivery, body)


def deliver(server: ServerProcess, delivery: str) -> httpx.Response:
    """A signed push on a connection of its own."""
    return fresh_post(f"{server.url}/webhooks/github", content=PUSH, headers=signed(PUSH, delivery))


def workers_of(server: ServerProcess) -> set[int]:
    """The pids of the main process's running intake workers."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    pids = {int(pid) for pid in children.read_text().split()}
    return {pid for pid in pids if b"eventflow.workers.worker" in _cmdline(pid)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def stored(server: ServerProcess, *ids: str) -> bool:
    """Whether the main process stored an event with each of `ids`."""
    return all(
        httpx.get(f"{server.url}/api/v1/events/{event_id}").status_code == 200 for event_id in ids
    )


def fresh_post(url: str, **kwargs: Any) -> httpx.Response:
    """One request on a new connection: each may be accepted by another worker."""
    with httpx.Client(headers={"connection": "close"}) as client:
        return client.post(url, **kwargs)


def read_response(connection: socket.socket) -> str:
    """One HTTP/1.1 response with a content-length, read whole."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    head, body = received.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return (head + b"\r\n\r\n" + body).decode()


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    path = tmp_path / "resources.yaml"
    path.write_text(GITHUB_SENSOR)
    return path


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start_server(
        resources: Path, *options: str, env: dict[str, str] | None = None
    ) -> ServerProcess:
        server = ServerProcess(
            resources,
            tmp_path / "data",
            free_port(),
            ("--intake-workers", "2", *options),
            env={"WORKERS_GITHUB_SECRET": SECRET, **(env or {})},
        )
        started.append(server)
        return server

    yield start_server
    for server in started:
        pids = workers_of(server) if server.process.poll() is None else set()
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_deliveries_are_answered_by_every_worker_and_stored_once(start, resources):
    """Signed pushes on fresh connections: each 202 with its id, both workers took some, every
    event stored by the main process; a redelivery on another connection is a duplicate."""
    server = start(resources)
    ids = [f"d-{uuid.uuid4()}" for _ in range(30)]
    for delivery in ids:
        response = deliver(server, delivery)
        assert (response.status_code, response.json()) == (202, {"id": delivery})
    eventually(lambda: stored(server, *ids), "every event stored")
    log = server.log.read_text()
    assert "intake_worker=0" in log
    assert "intake_worker=1" in log
    again = deliver(server, ids[0])
    assert (again.status_code, again.json()) == (200, {"id": ids[0], "duplicate": True})
    assert server.stop() == 0


def test_a_workers_event_is_matched_on_its_data_and_stored_as_it_came(start, resources):
    """The main process reads a worker's event data only when a trigger asks for it: filters
    on the data choose the trigger, its arguments come from the data, and the stored event
    holds the body's data."""
    flow = textwrap.dedent(
        """\
        ---
        apiVersion: eventflow.io/v1alpha1
        kind: Trigger
        metadata: {name: on-tag}
        spec:
          events:
            push:
              sensor: github
              type: com.github.push
              data: {ref: refs/tags/simple-tag}
              filter: 'data.repository.name == "Hello-World"'
          workflow: note
          arguments: {ref: "{{ events.push.data.ref }}", pusher: "{{ events.push.data.pusher.name }}"}
        ---
        apiVersion: eventflow.io/v1alpha1
        kind: Trigger
        metadata: {name: on-main}
        spec:
          events:
            push: {sensor: github, type: com.github.push, filter: 'data.ref == "refs/heads/main"'}
          workflow: note
        ---
        apiVersion: eventflow.io/v1alpha1
        kind: WorkflowTemplate
        metadata: {name: note}
        spec:
          parameters: [{name: ref, default: "-"}, {name: pusher, default: "-"}]
          steps:
            - name: note
              command: [python3, -c, "pass"]
        """
    )
    resources.write_text(GITHUB_SENSOR + flow)
    server = start(resources)
    assert deliver(server, "tagged").status_code == 202
    eventually(lambda: stored(server, "tagged"), "the event stored")
    event = httpx.get(f"{server.url}/api/v1/events/tagged").json()
    assert event["document"]["data"] == json.loads(PUSH)
    eventually(lambda: bool(httpx.get(f"{server.url}/api/v1/runs").json()["runs"]), "a run")
    [run] = httpx.get(f"{server.url}/api/v1/runs").json()["runs"]
    run = httpx.get(f"{server.url}/api/v1/runs/{run['id']}").json()
    assert (run["trigger"], run["event_id"]) == ("on-tag", "tagged")
    assert run["arguments"] == {"ref": "refs/tags/simple-tag", "pusher": "Codertocat"}
    assert server.stop() == 0


def test_bad_signature_is_refused_by_a_worker_and_nothing_is_stored(start, resources):
    server = start(resources)
    headers = signed(PUSH, "bad-1") | {"x-hub-signature-256": "sha256=" + "0" * 64}
    refused = fresh_post(f"{server.url}/webhooks/github", content=PUSH, headers=headers)
    assert (refused.status_code, refused.json()) == (401, {"error": "signature does not match"})
    unknown = fresh_post(f"{server.url}/webhooks/nowhere", json={})
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"error": "no webhook sensor at /webhooks/nowhere"},
    )
    good = deliver(server, "ok-1")
    assert good.status_code == 202
    eventually(lambda: stored(server, "ok-1"), "the good delivery stored")
    assert httpx.get(f"{server.url}/api/v1/events/bad-1").status_code == 404
    assert server.stop() == 0


def test_a_registered_webhook_is_served_by_every_worker_once_answered(start, resources):
    """201 from the API means every worker serves the new path; after the DELETE's 200 none
    does. The REST calls themselves went through a worker to the main process."""
    server = start(resources)
    spec = {"path": "later", "event": {"type": "com.example.later", "source": "/later"}}
    created = httpx.post(f"{server.url}/api/v1/webhooks", json={"name": "later", **spec})
    assert created.status_code == 201, created.text
    statuses = {fresh_post(f"{server.url}/webhooks/later", json={}).status_code for _ in range(20)}
    assert statuses == {202}
    removed = httpx.delete(f"{server.url}/api/v1/webhooks/later")
    assert removed.status_code == 200, removed.text
    statuses = {fresh_post(f"{server.url}/webhooks/later", json={}).status_code for _ in range(20)}
    assert statuses == {404}
    assert server.stop() == 0


def test_sighup_reloads_the_workers_too(start, resources):
    server = start(resources)
    resources.write_text(
        GITHUB_SENSOR
        + "---\n"
        + textwrap.dedent(
            """\
            apiVersion: eventflow.io/v1alpha1
            kind: Sensor
            metadata: {name: added}
            spec: {webhook: {path: added}}
            """
        )
    )
    server.process.send_signal(signal.SIGHUP)
    eventually(
        lambda: fresh_post(f"{server.url}/webhooks/added", json={}).status_code == 202,
        "the added sensor answers",
    )
    statuses = {fresh_post(f"{server.url}/webhooks/added", json={}).status_code for _ in range(20)}
    assert statuses == {202}
    assert server.stop() == 0


def test_a_killed_worker_is_replaced_while_the_other_answers(start, resources):
    server = start(resources)
    eventually(lambda: len(workers_of(server)) == 2, "two workers")
    victim = min(workers_of(server))
    os.kill(victim, signal.SIGKILL)
    # The listener stays open in the other worker: no delivery is refused meanwhile.
    for number in range(20):
        delivery = f"k-{number}"
        response = deliver(server, delivery)
        assert response.status_code == 202, response.text
    eventually(
        lambda: len(workers_of(server)) == 2 and victim not in workers_of(server),
        "a new worker in the dead one's place",
    )
    assert "intake worker exited; starting another" in server.log.read_text()
    assert server.stop() == 0


def test_workers_stop_when_the_main_process_dies(start, resources):
    """kill -9 of the main process: its workers notice and stop, the port is free again."""
    server = start(resources)
    eventually(lambda: len(workers_of(server)) == 2, "two workers")
    pids = workers_of(server)
    server.stop(signal.SIGKILL)
    eventually(lambda: not any(alive(pid) for pid in pids), "the workers gone", timeout=40)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_sigterm_answers_the_delivery_in_flight_then_stops_everything(start, resources, tmp_path):
    """A delivery half sent when SIGTERM arrives is still answered 202 and kept; then the main
    process exits 0 and takes its workers with it."""
    server = start(resources)
    pids = workers_of(server)
    port = int(server.url.rsplit(":", 1)[1])
    headers = signed(PUSH, "in-flight")
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (
        f"POST /webhooks/github HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(PUSH)}\r\n"
        f"{head}\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sender:
        sender.sendall(request + PUSH[:100])
        time.sleep(0.5)  # the worker is reading the body now
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sender.sendall(PUSH[100:])
        answer = read_response(sender)
    assert answer.startswith("HTTP/1.1 202 "), answer
    assert json.loads(answer.split("\r\n\r\n", 1)[1]) == {"id": "in-flight"}
    assert server.process.wait(timeout=60) == 0
    server.log_file.close()
    assert not any(alive(pid) for pid in pids)
    again = start(resources)
    eventually(lambda: stored(again, "in-flight"), "the in-flight event kept")
    assert again.stop() == 0


def test_the_rest_api_keeps_its_tokens_through_the_workers(start, resources, tmp_path):
    """Requests passed to the main process are checked there: no token 401, a token 200,
    webhooks stay outside the tokens; a step's log streams back through the worker."""
    token = tmp_path / "token"
    token.write_text("s3cret-reader-writer\n")
    tokens = [{"name": "ops", "scopes": ["read", "write"], "secret": {"file": str(token)}}]
    flow = textwrap.dedent(
        """\
        ---
        apiVersion: eventflow.io/v1alpha1
        kind: Trigger
        metadata: {name: on-push}
        spec:
          events: {push: {sensor: github, type: com.github.push}}
          workflow: say
        ---
        apiVersion: eventflow.io/v1alpha1
        kind: WorkflowTemplate
        metadata: {name: say}
        spec:
          steps:
            - name: hello
              command: [python3, -c, "print('hello from the step')"]
        """
    )
    resources.write_text(GITHUB_SENSOR + flow)
    server = start(resources, env={"EVENTFLOW_API__TOKENS": json.dumps(tokens)})
    bearer = {"authorization": "Bearer s3cret-reader-writer"}
    assert httpx.get(f"{server.url}/api/v1/runs").status_code == 401
    delivered = deliver(server, "logged")
    assert delivered.status_code == 202

    def finished() -> bool:
        runs = httpx.get(f"{server.url}/api/v1/runs", headers=bearer).json()["runs"]
        return bool(runs) and runs[0]["state"] == "Succeeded"

    eventually(finished, "the run finished")
    [run] = httpx.get(f"{server.url}/api/v1/runs", headers=bearer).json()["runs"]
    logs = cli(
        "runs",
        "logs",
        run["id"],
        "hello",
        "--follow",
        "--token",
        "s3cret-reader-writer",
        server=server.url,
    )
    assert (logs.returncode, logs.stdout) == (0, "hello from the step\n"), logs.stderr
    assert server.stop() == 0


def test_workers_publish_to_jetstream_themselves(start, resources, tmp_path):
    """On NATS each worker has its own connection to JetStream: deliveries are stored by the
    main process's engine, which reads them from the stream; the bus being down is a 503."""
    with running(own_nats(free_port(), tmp_path / "js")) as nats:
        env = {"EVENTFLOW_BUS__URL": f"nats://127.0.0.1:{nats.port}"}
        server = start(resources, env=env)
        ids = [f"js-{number}" for number in range(10)]
        for delivery in ids:
            response = deliver(server, delivery)
            assert (response.status_code, response.json()) == (202, {"id": delivery})
        eventually(lambda: stored(server, *ids), "every event stored through JetStream")
        nats.kill()
        refused = deliver(server, "js-down")
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert server.stop() == 0


def test_a_rate_limit_is_one_bucket_for_all_the_workers(start, tmp_path):
    """Burst 4 at 0.01/s: of 12 deliveries spread over both workers, 4 are taken and 8 are
    429 with Retry-After, and only the 4 are stored."""
    resources = tmp_path / "limited.yaml"
    resources.write_text(
        textwrap.dedent(
            """\
            apiVersion: eventflow.io/v1alpha1
            kind: Sensor
            metadata: {name: limited}
            spec:
              webhook:
                path: limited
                rateLimit: {perSecond: 0.01, burst: 4}
                event: {type: t, source: /s, id: "{{ body.n }}"}
            """
        )
    )
    server = start(resources)
    answers = [
        fresh_post(f"{server.url}/webhooks/limited", json={"n": f"r-{number}"})
        for number in range(12)
    ]
    assert sorted(answer.status_code for answer in answers) == [202] * 4 + [429] * 8
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.json() == {
        "error": "more than 0.01 deliveries per second (burst 4) on /webhooks/limited; send"
        " again after the Retry-After seconds"
    }
    assert int(refused.headers["retry-after"]) >= 1
    taken = [answer.json()["id"] for answer in answers if answer.status_code == 202]
    eventually(lambda: stored(server, *taken), "the taken deliveries stored")
    turned_away = [f"r-{n}" for n in range(12) if f"r-{n}" not in taken]
    assert not any(stored(server, event_id) for event_id in turned_away)
    log = server.log.read_text()
    assert "intake_worker=0" in log
    assert "intake_worker=1" in log
    assert server.stop() == 0
