"""`eventflow serve | validate | send | explain | runs | deadletters ...`: the command line.

`serve`, `validate` and `explain` work on resource files; `send`, `runs` and `deadletters`
talk to a running server over its REST API (`--server`, or EVENTFLOW_SERVER), so they work
the same against a laptop and a cluster.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
import yaml

from eventflow.errors import ConfigError, InvalidEventError, ResourceError
from eventflow.events import Event, ReceivedEvent, new_event_id
from eventflow.logs import configure_logging
from eventflow.resources.validation import ResourceSet, load_resources
from eventflow.sensing.discovery import discover_plugins
from eventflow.settings import Settings

if TYPE_CHECKING:
    from eventflow.service import Service
    from eventflow.workers.supervising import IntakeWorkers

app = typer.Typer(
    name="eventflow",
    help="Event-driven orchestration: events in, DAG runs out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
runs_app = typer.Typer(help="Inspect and cancel runs on a running server.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
deadletters_app = typer.Typer(
    help="List and replay the events the bus set aside (NATS or Kafka bus).",
    no_args_is_help=True,
)
app.add_typer(deadletters_app, name="deadletters")
webhooks_app = typer.Typer(
    help="Register webhook endpoints on a running server, no restart needed.",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")

Paths = Annotated[list[Path], typer.Argument(help="resource files or directories", exists=True)]
Server = Annotated[
    str, typer.Option("--server", envvar="EVENTFLOW_SERVER", help="URL of a running eventflow")
]
DEFAULT_SERVER = "http://127.0.0.1:8080"
Token = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="EVENTFLOW_TOKEN", help="bearer token, when the server requires one"
    ),
]
Output = Annotated[str, typer.Option("--output", "-o", help="table or json")]


def out(text: str = "") -> None:
    typer.echo(text)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# --- serve, validate, explain (resource files) ------------------------------------------


@app.command()
def serve(
    paths: Paths,
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8080)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="store and step logs (.eventflow)")] = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="accept inline secrets {value: ...}; never in production")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="reload the resources when their files change")
    ] = False,
    intake_workers: Annotated[
        int | None,
        typer.Option(
            min=0, max=64, help="processes answering webhooks beside the engine's (default 0)"
        ),
    ] = None,
) -> None:
    """Run eventflow on the resources in PATHS until SIGTERM or Ctrl-C."""
    import structlog
    import uvicorn

    from eventflow.api.app import create_app
    from eventflow.api.listener import CoalescingHttpProtocol
    from eventflow.api.webhooks import tune_collector_for_intake
    from eventflow.sensing.secrets import INLINE_ALLOWED
    from eventflow.service import Service

    settings = Settings()
    overrides: dict[str, Any] = {}
    api_overrides = {"host": host, "port": port, "intake_workers": intake_workers}
    if any(value is not None for value in api_overrides.values()):
        overrides["api"] = settings.api.model_copy(
            update={k: v for k, v in api_overrides.items() if v is not None}
        )
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if watch:
        overrides["watch_resources"] = True
    settings = settings.model_copy(update=overrides)
    configure_logging(settings.log_format, settings.log_level)
    if dev:
        INLINE_ALLOWED.set(True)
        structlog.get_logger().warning(
            "DEVELOPMENT MODE: inline secrets are accepted; they end up in git and in process"
            " listings. Never run `serve --dev` where real deliveries arrive"
        )
    plugins = discover_plugins()
    try:
        # Triggers may listen to registered webhooks: the service checks those against its
        # store when it starts.
        load_resources(paths, plugins, registered_sensors=None)
    except ResourceError as error:
        typer.echo(str(error), err=True)
        raise fail(f"{len(error.problems)} problem(s) in the resources; nothing started") from None
    service = Service(settings, paths, plugins)
    workers, listen = _listening(service, dev=dev)
    try:
        config = uvicorn.Config(
            create_app(service, sighup_reloads=True, workers=workers),
            **listen,
            log_config=None,
            access_log=False,
            proxy_headers=False,  # as in the intake workers (workers/worker.py)
            http=CoalescingHttpProtocol,
            # Not uvloop: libuv starts a step's process by fork(), which costs more the
            # larger the server grows; the intake workers, which start none, run on it.
            loop="asyncio",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        )
        # uvicorn stops gracefully on SIGTERM, then raises the signal again for the handler
        # that was there before it; a graceful stop is a success, so that handler does nothing.
        signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
        tune_collector_for_intake()
        try:
            uvicorn.Server(config).run()
        except ConfigError as error:
            raise fail(str(error)) from None
    finally:
        if workers is not None:
            shutil.rmtree(workers.directory, ignore_errors=True)


def _listening(service: Service, *, dev: bool) -> tuple[IntakeWorkers | None, dict[str, Any]]:
    """The intake workers, if the settings ask for any, and where uvicorn listens: on the
    API's address, or (workers holding that) on a Unix socket for them alone."""
    from eventflow.workers.supervising import IntakeWorkers, bind_listener

    api = service.settings.api
    if not api.intake_workers:
        tls = {"ssl_certfile": api.tls_cert_file, "ssl_keyfile": api.tls_key_file}
        return None, {"host": api.host, "port": api.port, **tls}
    try:
        listener = bind_listener(api.host, api.port)
    except ConfigError as error:
        raise fail(str(error)) from None
    workers = IntakeWorkers(
        api.intake_workers,
        listener,
        # Private (0700), for the workers' sockets: a short path, as a Unix socket's must be,
        # that nobody else can reach.
        directory=Path(tempfile.mkdtemp(prefix="eventflow-")),
        service=service,
        dev=dev,
    )
    return workers, {"uds": str(workers.api_socket)}


def load_or_exit(paths: list[Path], registered: frozenset[str] = frozenset()) -> ResourceSet:
    """The resources in `paths`, or every problem printed and exit 1."""
    try:
        return load_resources(paths, discover_plugins(), registered)
    except ResourceError as error:
        for problem in error.problems:
            out(str(problem))
        raise fail(f"{len(error.problems)} problem(s) found") from None


@app.command()
def validate(
    paths: Paths,
    registered: Annotated[
        list[str] | None,
        typer.Option(
            "--registered",
            help="a sensor that triggers may listen to though no file defines it: a webhook"
            " registered through the REST API (repeat for each)",
        ),
    ] = None,
) -> None:
    """Check resource files; print every problem as file:line: Kind/name: field: message.

    A trigger's `sensor:` must name a Sensor in the files, or a webhook given with
    --registered (one registered through the REST API): a typo is still caught offline.
    """
    resources = load_or_exit(paths, frozenset(registered or ()))
    out(
        f"ok: {len(resources.sensors)} sensor(s), {len(resources.triggers)} trigger(s),"
        f" {len(resources.workflows)} workflow template(s)"
    )


def read_event_file(path: Path) -> Event:
    try:
        return Event.from_dict(json.loads(path.read_text()))
    except OSError as error:
        raise fail(f"{path}: cannot read: {error.strerror}") from None
    except ValueError as error:
        raise fail(f"{path}: not valid JSON: {error}") from None
    except InvalidEventError as error:
        raise fail(f"{path}: not a valid CloudEvent: {error}") from None


@app.command()
def explain(
    event_file: Annotated[Path, typer.Argument(help="a structured CloudEvent (JSON)")],
    paths: Paths,
    sensor: Annotated[str, typer.Option(help="name of the sensor that heard the event")] = "api",
) -> None:
    """For every trigger: does EVENT_FILE match it, and if not, which condition failed.

    Exits 0 when at least one trigger matches, 1 when none does.
    """
    from eventflow.engine.matching import TriggerIndex

    event = read_event_file(event_file)
    resources = load_or_exit(paths)
    index = TriggerIndex.build(located.resource for located in resources.triggers.values())
    verdicts = index.explain(ReceivedEvent(event, sensor, datetime.now(UTC)))
    for verdict in verdicts:
        if verdict.matched:
            out(f"MATCH     {verdict.trigger} (event {verdict.event_name!r})")
        else:
            out(f"NO MATCH  {verdict.trigger}: {verdict.reason}")
    if not verdicts:
        out("no triggers defined")
    if not any(verdict.matched for verdict in verdicts):
        raise typer.Exit(1)


# --- send and runs (a running server) ---------------------------------------------------


def call(
    server: str, method: str, path: str, token: str | None = None, **kwargs: Any
) -> httpx.Response:
    url = server.rstrip("/") + path
    headers = auth_headers(token)
    try:
        response = httpx.request(method, url, timeout=30.0, headers=headers, **kwargs)
    except httpx.HTTPError as error:
        raise fail(
            f"cannot reach eventflow at {server}: {error}; is `eventflow serve` running?"
        ) from None
    if response.status_code >= 400:
        try:
            answer = response.json()
            message = answer.get("error", response.text)
        except ValueError:
            answer, message = {}, response.text
        for problem in answer.get("problems", []):
            out(str(problem))
        raise fail(f"{response.status_code}: {message}")
    return response


@app.command()
def send(
    type: Annotated[str | None, typer.Option("--type", help="CloudEvent type")] = None,
    source: Annotated[str, typer.Option(help="CloudEvent source")] = "eventflow-cli",
    subject: Annotated[str | None, typer.Option(help="CloudEvent subject")] = None,
    data: Annotated[str | None, typer.Option(help="JSON data, or @FILE to read it")] = None,
    event_id: Annotated[str | None, typer.Option("--id", help="event id (default: new)")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="a whole structured CloudEvent (JSON)")
    ] = None,
    sensor: Annotated[str, typer.Option(help="sensor name stamped on the event")] = "api",
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Put a test event on the bus of a running server; prints its id."""
    if file is not None:
        event = read_event_file(file)
    else:
        if type is None:
            raise fail("give --type (and --source, --data), or --file EVENT.json", 2)
        payload: Any = None
        if data is not None:
            text = Path(data[1:]).read_text() if data.startswith("@") else data
            try:
                payload = json.loads(text)
            except ValueError as error:
                raise fail(f"--data is not valid JSON: {error}", 2) from None
        try:
            event = Event(
                id=event_id or new_event_id(),
                source=source,
                type=type,
                subject=subject,
                time=datetime.now(UTC),
                datacontenttype="application/json" if payload is not None else None,
                data=payload,
            )
        except InvalidEventError as error:
            raise fail(str(error), 2) from None
    response = call(
        server,
        "POST",
        "/api/v1/events",
        params={"sensor": sensor},
        json=event.to_dict(),
        token=token,
    )
    out(response.json()["id"])


def _time(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else "-"


def _duration(run: dict[str, Any]) -> str:
    start, end = run.get("started_at"), run.get("finished_at")
    if not start or not end:
        return "-"
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return f"{seconds:.2f}s"


def table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@runs_app.command("list")
def runs_list(
    state: Annotated[str | None, typer.Option(help="only runs in this state")] = None,
    trigger: Annotated[str | None, typer.Option(help="only runs of this trigger")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 50,
    output: Output = "table",
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """List runs, newest first."""
    params = {k: v for k, v in {"state": state, "trigger": trigger}.items() if v}
    runs = call(
        server, "GET", "/api/v1/runs", params={**params, "limit": limit}, token=token
    ).json()["runs"]
    if output == "json":
        out(json.dumps(runs, indent=2))
        return
    rows = [["RUN", "TRIGGER", "WORKFLOW", "STATE", "CREATED", "DURATION"]]
    rows += [
        [r["id"], r["trigger"], r["workflow"], r["state"], _time(r["created_at"]), _duration(r)]
        for r in runs
    ]
    table(rows)


@runs_app.command("get")
def runs_get(
    run_id: str, output: Output = "table", server: Server = DEFAULT_SERVER, token: Token = None
) -> None:
    """Show a run and each step's state, times, exit code and log tail."""
    run = call(server, "GET", f"/api/v1/runs/{run_id}", token=token).json()
    if output == "json":
        out(json.dumps(run, indent=2))
        return
    out(f"Run:       {run['id']}")
    out(f"Trigger:   {run['trigger']}  Workflow: {run['workflow']}  Event: {run['event_id']}")
    out(f"State:     {run['state']}" + (f" ({run['reason']})" if run["reason"] else ""))
    out(
        f"Created:   {_time(run['created_at'])}  Started: {_time(run['started_at'])}"
        f"  Finished: {_time(run['finished_at'])}  Duration: {_duration(run)}"
    )
    if run["arguments"]:
        out("Arguments: " + ", ".join(f"{k}={v}" for k, v in run["arguments"].items()))
    out()
    rows = [["STEP", "STATE", "ATTEMPT", "STARTED", "FINISHED", "EXIT", "REASON"]]
    for step in run["steps"]:
        exit_code = step["exit_code"]
        rows.append(
            [
                step["name"],
                step["state"],
                str(step["attempt"]),
                _time(step["started_at"]),
                _time(step["finished_at"]),
                "-" if exit_code is None else str(exit_code),
                step["reason"] or "",
            ]
        )
    table(rows)
    for step in run["steps"]:
        if step["log_tail"]:
            out(f"\n--- {step['name']} (attempt {step['attempt']}), last lines:")
            for line in step["log_tail"].splitlines():
                out(f"  {line}")


@runs_app.command("logs")
def runs_logs(
    run_id: str,
    step: str,
    attempt: Annotated[int | None, typer.Option(help="attempt number (default: latest)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream while it runs")] = False,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Print a step's output (stdout and stderr, interleaved)."""
    params: dict[str, Any] = {"follow": follow}
    if attempt is not None:
        params["attempt"] = attempt
    url = server.rstrip("/") + f"/api/v1/runs/{run_id}/steps/{step}/logs"
    try:
        # No read timeout: --follow waits as long as the step runs.
        timeout = httpx.Timeout(10.0, read=None)
        with httpx.stream(
            "GET", url, params=params, timeout=timeout, headers=auth_headers(token)
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise fail(f"{response.status_code}: {response.json().get('error')}")
            for chunk in response.iter_text():
                sys.stdout.write(chunk)
                sys.stdout.flush()
    except httpx.HTTPError as error:
        raise fail(f"cannot reach eventflow at {server}: {error}") from None


@runs_app.command("cancel")
def runs_cancel(run_id: str, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Cancel a run: running steps are stopped, the others never start."""
    run = call(server, "POST", f"/api/v1/runs/{run_id}/cancel", token=token).json()
    out(f"{run['id']}: cancel requested (state {run['state']})")


@deadletters_app.command("list")
def deadletters_list(
    limit: Annotated[int, typer.Option(help="at most this many, oldest first")] = 100,
    output: Output = "table",
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """List dead letters: events that failed every delivery or did not decode."""
    response = call(server, "GET", "/api/v1/deadletters", params={"limit": limit}, token=token)
    letters = response.json()["deadletters"]
    if output == "json":
        out(json.dumps(letters, indent=2))
        return
    rows = [["ID", "SUBJECT", "REASON"]]
    rows += [[str(letter["id"]), letter["subject"], letter["reason"]] for letter in letters]
    table(rows)


@deadletters_app.command("replay")
def deadletters_replay(
    letter_id: int, server: Server = DEFAULT_SERVER, token: Token = None
) -> None:
    """Put a dead letter back on the bus; the engine gets it as a first delivery."""
    call(server, "POST", f"/api/v1/deadletters/{letter_id}/replay", token=token)
    out(f"dead letter {letter_id}: replayed")


# --- webhooks and reload (a running server) --------------------------------------------


def read_spec_file(path: Path) -> dict[str, Any]:
    """A `spec.webhook` mapping from a YAML or JSON file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise fail(f"{path}: cannot read: {error.strerror}", 2) from None
    except yaml.YAMLError as error:
        raise fail(f"{path}: not valid YAML: {error}", 2) from None
    if not isinstance(data, dict):
        raise fail(f"{path}: expected a mapping of spec.webhook fields (path, auth, ...)", 2)
    return data


@webhooks_app.command("add")
def webhooks_add(
    name: Annotated[str, typer.Argument(help="the sensor name; triggers use `sensor: NAME`")],
    path: Annotated[str | None, typer.Option(help="served at /webhooks/PATH")] = None,
    auth_preset: Annotated[
        str | None, typer.Option(help="github, gitlab, bitbucket, stripe or slack")
    ] = None,
    secret_env: Annotated[
        str | None, typer.Option(help="environment variable of the server holding the secret")
    ] = None,
    secret_file: Annotated[
        str | None, typer.Option(help="file on the server holding the secret")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="a spec.webhook mapping (YAML or JSON)")
    ] = None,
    replace: Annotated[bool, typer.Option(help="replace the registered webhook NAME")] = False,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Register a webhook endpoint (options override the --file spec)."""
    spec = read_spec_file(file) if file is not None else {}
    if path is not None:
        spec["path"] = path
    secrets = [{"env": secret_env}] if secret_env else []
    secrets += [{"file": secret_file}] if secret_file else []
    if auth_preset is not None or secrets:
        spec["auth"] = {**spec.get("auth", {}), **({"preset": auth_preset} if auth_preset else {})}
        if secrets:
            spec["auth"]["secrets"] = secrets
    if replace:
        webhook = call(server, "PUT", f"/api/v1/webhooks/{name}", json=spec, token=token).json()
    else:
        webhook = call(
            server, "POST", "/api/v1/webhooks", json={"name": name, **spec}, token=token
        ).json()
    verb = "replaced" if replace else "registered"
    out(f"{verb} webhook {webhook['name']} at /webhooks/{webhook['path']}")


@webhooks_app.command("list")
def webhooks_list(
    output: Output = "table", server: Server = DEFAULT_SERVER, token: Token = None
) -> None:
    """List the webhooks: from resource files (read-only) and registered."""
    webhooks = call(server, "GET", "/api/v1/webhooks", token=token).json()["webhooks"]
    if output == "json":
        out(json.dumps(webhooks, indent=2))
        return
    rows = [["NAME", "PATH", "ORIGIN", "AUTH", "DEFINED"]]
    for webhook in webhooks:
        auth = webhook["spec"].get("auth") or {}
        kind = auth.get("preset") or next(
            (k for k in ("hmac", "bearer", "basic") if k in auth), "-"
        )
        where = webhook.get("file") or str(webhook.get("created_at", "-"))
        rows.append(
            [webhook["name"], f"/webhooks/{webhook['path']}", webhook["origin"], kind, where]
        )
    table(rows)


@webhooks_app.command("get")
def webhooks_get(name: str, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Show one webhook as JSON: its spec, origin and times."""
    out(json.dumps(call(server, "GET", f"/api/v1/webhooks/{name}", token=token).json(), indent=2))


@webhooks_app.command("rm")
def webhooks_rm(name: str, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Remove a registered webhook; its path answers 404 from now on."""
    call(server, "DELETE", f"/api/v1/webhooks/{name}", token=token)
    out(f"removed webhook {name}")


@app.command()
def reload(server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    """Make a running server read its resource files again (as SIGHUP does)."""
    changes = call(server, "POST", "/api/v1/reload", token=token).json()["sensors"]
    out(
        "reloaded: "
        + "; ".join(f"{what} {', '.join(names) or '-'}" for what, names in changes.items())
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
