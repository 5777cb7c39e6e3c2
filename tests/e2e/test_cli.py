"""The CLI as a user runs it: `eventflow serve` as a process, the other commands against it."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EXAMPLES, free_port

pytestmark = pytest.mark.e2e

EVENTFLOW = str(Path(sys.executable).with_name("eventflow"))


def cli(*args: str, server: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"EVENTFLOW_SERVER": server} if server else {})}
    return subprocess.run(
        [EVENTFLOW, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


class ServerProcess:
    def __init__(
        self,
        resources: Path,
        data_dir: Path,
        port: int,
        options: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = data_dir.parent / f"server-{port}.log"
        self.log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [
                *(EVENTFLOW, "serve", str(resources), "--port", str(port)),
                *("--data-dir", str(data_dir), *options),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            env={**os.environ, "EVENTFLOW_SHUTDOWN_GRACE_SECONDS": "1", **(env or {})},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become ready:\n" + self.log.read_text())

    def run(self, run_id: str, states: set[str], timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run: dict[str, Any] = httpx.get(f"{self.url}/api/v1/runs/{run_id}").json()
            if run["state"] in states:
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} never reached {states}")

    def first_run(self, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = httpx.get(f"{self.url}/api/v1/runs").json()["runs"]
            if runs:
                return runs[0]  # type: ignore[no-any-return]
            time.sleep(0.05)
        raise AssertionError("no run was created")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        self.log_file.close()
        return code


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def start(
        resources: Path = EXAMPLES, data_dir: Path | None = None, *options: str
    ) -> ServerProcess:
        server = ServerProcess(resources, data_dir or tmp_path / "data", free_port(), options)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def test_validate_accepts_the_examples():
    """`eventflow validate examples/quickstart` passes and counts what it read."""
    result = cli("validate", str(EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "ok: 2 sensor(s), 2 trigger(s), 2 workflow template(s)\n"


def test_validate_reports_every_problem_with_its_place(tmp_path):
    """Typos, dangling names, a cycle and bad CEL are all reported in one run, file:line first."""
    (tmp_path / "broken.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: eventflow.io/v1alpha1
            kind: Trigger
            metadata: {name: t}
            spec:
              events:
                e: {sensor: missing, filter: 'data.x >'}
              workflow: nowhere
            ---
            apiVersion: eventflow.io/v1alpha1
            kind: WorkflowTemplate
            metadata: {name: w}
            spec:
              steps:
                - name: a
                  depends: [b]
                  command: [echo]
                - name: b
                  depends: [a]
                  command: [echo]
                  retrys: 3
            """
        )
    )
    result = cli("validate", str(tmp_path))
    assert result.returncode == 1
    path = tmp_path / "broken.yaml"
    assert result.stdout.splitlines() == [
        f"{path}:6: Trigger/t: spec.events.e.sensor: no Sensor named 'missing'; none is defined",
        f"{path}:6: Trigger/t: spec.events.e.filter: 'data.x >' is not valid CEL: 1:9: Syntax"
        " error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true',"
        " 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}",
        f"{path}:7: Trigger/t: spec.workflow: no WorkflowTemplate named 'nowhere'; none is defined",
        f"{path}:20: WorkflowTemplate/w: spec.steps[1].retrys: unknown field 'retrys'; known"
        " fields: name, image, command, args, env, workingDir, depends, when, retries, timeout,"
        " kubernetes",
    ]
    assert result.stderr == "error: 4 problem(s) found\n"


def test_explain_says_which_trigger_matches_and_why_others_do_not():
    """`eventflow explain` prints a verdict for every trigger and exits 0 on a match."""
    result = cli(
        "explain", str(EXAMPLES / "events" / "upload.json"), str(EXAMPLES), "--sensor", "uploads"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "NO MATCH  ci-on-push: sensor: 'uploads' is not 'github'",
        "MATCH     etl-on-upload (event 'upload')",
    ]


# With intake workers, the webhooks are answered by other processes and every other request
# passes through them to the main process: the same walkthrough must read the same.
WORKERS = pytest.mark.parametrize(
    "workers", [(), ("--intake-workers", "2")], ids=["one-process", "intake-workers"]
)


@WORKERS
def test_walkthrough_webhook_to_finished_run(start_server, tmp_path, workers):
    """The README walkthrough: POST a webhook, list and inspect the run, read a step's log."""
    server = start_server(EXAMPLES, None, *workers)
    response = httpx.post(
        f"{server.url}/webhooks/uploads",
        content=(EXAMPLES / "upload.json").read_bytes(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202
    run_event_id = response.json()["id"]
    run = server.run(server.first_run()["id"], {"Succeeded", "Failed"})
    assert run["state"] == "Succeeded"

    listed = cli("runs", "list", server=server.url)
    assert listed.returncode == 0, listed.stderr
    assert run["id"] in listed.stdout
    assert "etl-on-upload" in listed.stdout

    shown = cli("runs", "get", run["id"], server=server.url)
    assert shown.returncode == 0, shown.stderr
    assert "State:     Succeeded" in shown.stdout
    assert "transform  Succeeded  1" in shown.stdout

    logs = cli("runs", "logs", run["id"], "extract", server=server.url)
    assert (
        logs.stdout == 'extracting incoming/orders.csv\n{"rows": 3, "key": "incoming/orders.csv"}\n'
    )

    data_file = tmp_path / "b.json"
    data_file.write_text(json.dumps({"key": "b.csv", "size": 1, "etag": "x"}))
    sent = cli(
        *("send", "--type", "com.example.object.created", "--source", "/cli"),
        *("--sensor", "uploads", "--id", "cli-1", "--data", f"@{data_file}"),
        server=server.url,
    )
    assert (sent.returncode, sent.stdout) == (0, "cli-1\n"), sent.stderr
    upload = str(EXAMPLES / "events" / "upload.json")
    from_file = cli("send", "--file", upload, "--sensor", "uploads", server=server.url)
    assert (from_file.returncode, from_file.stdout) == (0, "upload-0001\n"), from_file.stderr
    bad = cli("send", "--type", "t", "--data", "{oops", server=server.url)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --data is not valid JSON: ")
    deadline = time.monotonic() + 20
    while len(runs := httpx.get(f"{server.url}/api/v1/runs").json()["runs"]) < 2:
        assert time.monotonic() < deadline, runs
        time.sleep(0.05)
    assert {run["event_id"] for run in runs} == {run_event_id, "cli-1"}
    # upload.json is the same object (key and etag) as the first upload: no second run
    while (event := httpx.get(f"{server.url}/api/v1/events/upload-0001")).status_code == 404:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [decision] = event.json()["decisions"]
    assert (decision["matched"], decision["run_id"]) == (True, run["id"])
    assert server.stop() == 0


def test_readme_github_example_runs_ci_once_for_a_delivery_sent_twice(tmp_path):
    """README's worked example as written: examples/github, the hand-signed push sent twice."""
    secret = "It is a Secret to Everybody"
    server = ServerProcess(
        EXAMPLES.parent / "github",
        tmp_path / "data",
        free_port(),
        env={"GITHUB_WEBHOOK_SECRET": secret},
    )
    try:
        body = b'{"ref":"refs/heads/main","after":"6113728f","repository":{"full_name":"octo/app"}}'
        headers = {
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "x-hub-signature-256": "sha256="
            + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        }
        answers = [
            httpx.post(f"{server.url}/webhooks/github", content=body, headers=headers)
            for _ in range(2)
        ]
        assert [(answer.status_code, answer.json()) for answer in answers] == [
            (202, {"id": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}),
            (200, {"id": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "duplicate": True}),
        ]
        run = server.run(server.first_run()["id"], {"Succeeded", "Failed"})
        assert (run["trigger"], run["state"]) == ("ci-on-main", "Succeeded")
        logs = cli("runs", "logs", run["id"], "checkout", server=server.url)
        assert logs.stdout == "checkout octo/app 6113728f\n"
        assert len(httpx.get(f"{server.url}/api/v1/runs").json()["runs"]) == 1
    finally:
        server.stop()


def test_cli_against_no_server_says_what_to_do():
    """`runs list` with nothing listening names the URL and suggests starting the server."""
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("runs", "list", server=url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach eventflow at {url}: ")
    assert result.stderr.endswith("is `eventflow serve` running?\n")


@WORKERS
def test_kill_mid_run_then_restart_reconciles_the_run(start_server, tmp_path, workers):
    """After kill -9 during a step, the restarted server marks the attempt interrupted and retries."""
    resources = tmp_path / "resources"
    resources.mkdir()
    (resources / "flow.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: eventflow.io/v1alpha1
            kind: Sensor
            metadata: {name: hook}
            spec: {webhook: {path: hook}}
            ---
            apiVersion: eventflow.io/v1alpha1
            kind: Trigger
            metadata: {name: on-hook}
            spec:
              events: {hook: {sensor: hook}}
              workflow: flow
            ---
            apiVersion: eventflow.io/v1alpha1
            kind: WorkflowTemplate
            metadata: {name: flow}
            spec:
              steps:
                - name: work
                  command: [python3, -c, "import os, time; time.sleep(60 if os.environ['EVENTFLOW_ATTEMPT'] == '1' else 0)"]
                  retries: {limit: 1, backoff: 0s}
            """
        )
    )
    data = tmp_path / "data"
    server = start_server(resources, data, *workers)
    httpx.post(f"{server.url}/webhooks/hook", json={})
    run_id = server.first_run()["id"]
    deadline = time.monotonic() + 20
    while httpx.get(f"{server.url}/api/v1/runs/{run_id}").json()["steps"][0]["state"] != "Running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.stop(signal.SIGKILL)

    restarted = start_server(resources, data, *workers)
    run = restarted.run(run_id, {"Succeeded", "Failed"})
    assert run["state"] == "Succeeded"
    assert run["steps"][0]["attempt"] == 2
    assert restarted.stop() == 0


@WORKERS
def test_serve_watch_applies_an_edited_file_and_refuses_a_broken_one(
    start_server, tmp_path, workers
):
    """`serve --watch`: a new sensor in the file answers without a reload call; a typo is
    logged with its file:line and the running endpoints keep answering."""
    resources = tmp_path / "resources.yaml"
    document = textwrap.dedent(
        """\
        apiVersion: eventflow.io/v1alpha1
        kind: Sensor
        metadata: {{name: {name}}}
        spec:
          webhook: {{path: {path}}}
        """
    )
    resources.write_text(document.format(name="a", path="a"))
    server = start_server(resources, None, "--watch", *workers)

    def status(path: str) -> int:
        return httpx.post(f"{server.url}/webhooks/{path}", json={}).status_code

    def eventually(check: Any) -> None:
        deadline = time.monotonic() + 15
        while not check():
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.1)

    resources.write_text(
        document.format(name="a", path="a") + "---\n" + document.format(name="b", path="b")
    )
    eventually(lambda: status("b") == 202)
    resources.write_text(document.format(name="a", path="/c"))
    eventually(lambda: "reload refused; nothing changed" in server.log.read_text())
    assert f"{resources}:5: Sensor/a: spec.webhook.path: '/c' starts with /" in (
        server.log.read_text()
    )
    assert (status("a"), status("b")) == (202, 202)
    assert server.stop() == 0
