"""The Kubernetes executor against the stateful API emulator on loopback: Job bodies,
adoption on 409, retries on 429/5xx, watch resumption after 410 and dropped connections,
how Job and Pod status become step updates, cancel, adopt, and the requests per step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from eventflow.errors import ConfigError, TemporaryError
from eventflow.executors.kubernetes import KubernetesExecutor
from eventflow.executors.manifests import JobOptions, build_job, job_name
from eventflow.executors.protocol import StepKey, StepPhase, StepSpec, StepUpdate
from eventflow.executors.watching import (
    PodReport,
    TokenBucket,
    newest_pod,
    pod_report,
    retry_after,
    verdict,
)
from eventflow.resources.kubernetes import KubernetesOptions
from tests.k8s_emulator import KubeEmulator, running_emulator

pytestmark = pytest.mark.timeout(20)

KEY = StepKey("0190a1b2c3", "extract", 1)
NAME = job_name(KEY)
OPTIONS = JobOptions(namespace="eventflow", ttl_seconds_after_finished=600)
JOBS = "/apis/batch/v1/namespaces/eventflow/jobs"


def spec(key: StepKey = KEY, **fields: Any) -> StepSpec:
    return StepSpec(key, command=["python", "-m", "extract"], image="python:3.12", **fields)


@pytest.fixture
async def k8s() -> AsyncIterator[KubeEmulator]:
    async with running_emulator() as emulator:
        yield emulator


class Harness:
    def __init__(self, k8s: KubeEmulator, **settings: Any) -> None:
        fast = {"retry_base_delay": 0.01, "watch_resume_delay": 0.01}
        self.executor = KubernetesExecutor(
            OPTIONS, api_client_factory=k8s.api_client, **(fast | settings)
        )
        self.stream = self.executor.updates()

    async def next(self) -> StepUpdate:
        async with asyncio.timeout(5):
            return await anext(self.stream)

    async def watching(self, k8s: KubeEmulator, count: int = 1) -> None:
        """Wait until `count` watch requests reached the emulator."""
        async with asyncio.timeout(5):
            while len(k8s.calls("GET", JOBS)) - len(lists(k8s)) < count:
                await asyncio.sleep(0.005)


def lists(k8s: KubeEmulator) -> list[Any]:
    return [r for r in k8s.calls("GET", JOBS) if "watch" not in r.query]


def watches(k8s: KubeEmulator) -> list[Any]:
    return [r for r in k8s.calls("GET", JOBS) if "watch" in r.query]


@pytest.fixture
async def harness(k8s: KubeEmulator) -> AsyncIterator[Harness]:
    running = Harness(k8s)
    await running.executor.start()
    await running.watching(k8s)
    yield running
    await running.executor.close()


def brief(update: StepUpdate) -> tuple[Any, ...]:
    return (
        update.key,
        update.phase,
        update.exit_code,
        update.reason,
        update.outputs,
        update.log_tail,
    )


async def test_submit_creates_exactly_the_built_job(k8s: KubeEmulator, harness: Harness) -> None:
    """The create request carries build_job's body, to the namespace's jobs collection."""
    await harness.executor.submit(spec(timeout_seconds=30))
    [create] = k8s.calls("POST")
    assert create.path == JOBS
    assert create.body == build_job(spec(timeout_seconds=30), OPTIONS)
    assert create.body["spec"]["ttlSecondsAfterFinished"] == 600


DEFAULTS = KubernetesOptions.model_validate(
    {
        "serviceAccountName": "steps",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "labels": {"owner": "platform"},
        "podTemplate": {"spec": {"containers": [{"name": "step", "stdin": False}]}},
    }
)
WORKFLOW_BLOCK = {"nodeSelector": {"pool": "batch"}, "serviceAccountName": "etl"}
STEP_BLOCK = {
    "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}},
    "envRefs": {"DB_PASSWORD": {"secret": "db", "key": "password"}},
    "podTemplate": {"spec": {"priorityClassName": "batch"}},
}


async def test_job_body_carries_installation_workflow_and_step_blocks(k8s: KubeEmulator) -> None:
    """The create request holds exactly the Job of the three merged `kubernetes:` blocks."""
    running = Harness(k8s, defaults=DEFAULTS)
    await running.executor.start()
    await running.executor.submit(spec(kubernetes=(WORKFLOW_BLOCK, STEP_BLOCK)))
    await running.executor.close()
    [create] = k8s.calls("POST")
    labels = {
        "owner": "platform",
        "app.kubernetes.io/managed-by": "eventflow",
        "eventflow.io/run": "0190a1b2c3",
        "eventflow.io/step": "extract",
        "eventflow.io/attempt": "1",
    }
    assert create.body == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": NAME,
            "namespace": "eventflow",
            "labels": labels,
            "annotations": {"eventflow.io/step-key": '["0190a1b2c3", "extract", 1]'},
        },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "etl",
                    "nodeSelector": {"pool": "batch"},
                    "priorityClassName": "batch",
                    "containers": [
                        {
                            "name": "step",
                            "image": "python:3.12",
                            "command": ["python", "-m", "extract"],
                            "env": [
                                {
                                    "name": "DB_PASSWORD",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": "db", "key": "password"}
                                    },
                                },
                                {"name": "EVENTFLOW_ATTEMPT", "value": "1"},
                                {"name": "EVENTFLOW_OUTPUT_FILE", "value": "/dev/termination-log"},
                                {"name": "EVENTFLOW_RUN_ID", "value": "0190a1b2c3"},
                                {"name": "EVENTFLOW_STEP", "value": "extract"},
                            ],
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "128Mi"},
                                "limits": {"memory": "1Gi"},
                            },
                            "stdin": False,
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }
                    ],
                },
            },
        },
    }


async def test_block_that_breaks_the_job_fails_the_step_and_creates_nothing(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """A patch renaming the step's container ends the attempt FAILED, saying why; no create."""
    rename = {"podTemplate": {"spec": {"containers": [{"name": "step", "$patch": "delete"}]}}}
    await harness.executor.submit(spec(kubernetes=(rename,)))
    update = await harness.next()
    assert (update.phase, update.reason) == (
        StepPhase.FAILED,
        "kubernetes.podTemplate.spec.containers: the patch removes or renames the container"
        " 'step', which runs the step; patch it by name instead: containers: [{name: step, ...}]",
    )
    assert k8s.calls("POST") == []


async def test_successful_job_reports_running_then_succeeded_with_outputs(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """Active -> RUNNING; Complete -> SUCCEEDED with exit code 0, outputs and log tail."""
    await harness.executor.submit(spec())
    await k8s.start(NAME)
    assert brief(await harness.next()) == (KEY, StepPhase.RUNNING, None, None, None, None)
    await k8s.succeed(NAME, message='{"rows": 3}', log="one\ntwo\nthree\n")
    assert brief(await harness.next()) == (
        KEY,
        StepPhase.SUCCEEDED,
        0,
        None,
        {"rows": 3},
        "one\ntwo\nthree",
    )


async def test_each_step_costs_one_create_one_pod_list_one_log_read(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """Per step: one create, no GET of the Job, one pod list and one log read at the end,
    which also serves the full log the run controller asks for next."""
    await harness.executor.submit(spec())
    await k8s.start(NAME)
    await harness.next()
    await k8s.succeed(NAME, log="one\ntwo\n")
    await harness.next()
    assert [line async for line in harness.executor.logs(KEY)] == ["one", "two"]
    methods = [(r.method, r.path) for r in k8s.requests if "watch" not in r.query]
    pod = next(iter(k8s.pods))
    assert methods == [
        ("GET", JOBS),
        ("POST", JOBS),
        ("GET", "/api/v1/namespaces/eventflow/pods"),
        ("GET", f"/api/v1/namespaces/eventflow/pods/{pod}/log"),
    ]
    assert k8s.calls("GET", "/pods")[0].query == {"labelSelector": f"job-name={NAME}"}
    assert k8s.calls("GET", "/log")[0].query == {"container": "step"}
    assert len(watches(k8s)) == 1
    assert k8s.verbs() == {"list": 1, "watch": 1, "create": 1, "list pods": 1, "read log": 1}


async def test_log_tail_is_the_last_lines_of_the_one_log_read(k8s: KubeEmulator) -> None:
    """The update's log tail is the last `log_tail_lines` lines of the log read at the end."""
    running = Harness(k8s, log_tail_lines=2)
    await running.executor.start()
    await running.executor.submit(spec())
    await k8s.succeed(NAME, log="a\nb\nc\n")
    assert (await running.next()).phase is StepPhase.RUNNING
    update = await running.next()
    await running.executor.close()
    assert update.log_tail == "b\nc"
    assert len(k8s.calls("GET", "/log")) == 1


async def test_one_watch_by_label_from_the_list_version_with_bookmarks(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """The watch selects eventflow's Jobs and starts at the list's resourceVersion."""
    [listing] = lists(k8s)
    [watch] = watches(k8s)
    assert listing.query == {"labelSelector": "app.kubernetes.io/managed-by=eventflow"}
    assert watch.query == {
        "labelSelector": "app.kubernetes.io/managed-by=eventflow",
        "watch": "True",
        "resourceVersion": "100",
        "allowWatchBookmarks": "True",
        "timeoutSeconds": "300",
    }


async def test_conflict_on_create_adopts_the_existing_job(k8s: KubeEmulator) -> None:
    """A Job left by a previous eventflow answers 409: no duplicate, its end is reported."""
    first = Harness(k8s)
    await first.executor.start()
    await first.executor.submit(spec())
    await first.executor.close()
    await k8s.start(NAME)
    await k8s.succeed(NAME, message='{"ok": true}')
    second = Harness(k8s)
    await second.executor.start()
    await second.executor.submit(spec())
    update = await second.next()
    await second.executor.close()
    assert brief(update)[:5] == (KEY, StepPhase.SUCCEEDED, 0, None, {"ok": True})
    assert len(k8s.calls("POST")) == 2
    assert list(k8s.jobs) == [NAME]


async def test_second_submit_of_a_key_sends_nothing(k8s: KubeEmulator, harness: Harness) -> None:
    """submit is idempotent by key inside one executor: one create request."""
    await harness.executor.submit(spec())
    await harness.executor.submit(spec())
    assert len(k8s.calls("POST")) == 1


@pytest.mark.parametrize(("status", "retry_after"), [(429, "0"), (500, None), (503, None)])
async def test_throttled_or_failing_create_is_retried_then_made_once(
    k8s: KubeEmulator, harness: Harness, status: int, retry_after: str | None
) -> None:
    """429 and 5xx answers are retried; the Job is created once in the end."""
    k8s.fail_next("create", status, count=2, retry_after=retry_after)
    await harness.executor.submit(spec())
    assert len(k8s.calls("POST")) == 3
    assert list(k8s.jobs) == [NAME]


async def test_retry_after_is_waited_for(k8s: KubeEmulator, harness: Harness) -> None:
    """A 429 with Retry-After: 1 delays the next try by about a second, not the backoff."""
    k8s.fail_next("create", 429, retry_after="1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await harness.executor.submit(spec())
    assert 1.0 <= loop.time() - started < 1.5
    assert list(k8s.jobs) == [NAME]


async def test_create_failing_past_the_retries_is_temporary(k8s: KubeEmulator) -> None:
    """After max_retries the submit raises TemporaryError and a later submit tries again."""
    running = Harness(k8s, max_retries=1)
    await running.executor.start()
    k8s.fail_next("create", 500, count=2)
    with pytest.raises(TemporaryError) as caught:
        await running.executor.submit(spec())
    assert str(caught.value) == (
        "create_namespaced_job: the Kubernetes API answered 500: injected 500 (tried 2 times);"
        " check the API server and eventflow's network access to it"
    )
    await running.executor.submit(spec())
    await running.executor.close()
    assert list(k8s.jobs) == [NAME]


async def test_refused_create_fails_the_attempt_with_the_api_message(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """A 403 is not retried: the attempt ends FAILED, naming the Job and the answer."""
    k8s.fail_next("create", 403)
    await harness.executor.submit(spec())
    update = await harness.next()
    assert (update.phase, update.reason) == (
        StepPhase.FAILED,
        f"the API server refused the Job {NAME}: 403 Forbidden: injected 403; fix the step or the RBAC",
    )
    assert len(k8s.calls("POST")) == 1


async def slow_resuming(k8s: KubeEmulator) -> Harness:
    """An executor that waits 0.3 s before it resumes a watch: time for a test to act."""
    running = Harness(k8s, watch_resume_delay=0.3)
    await running.executor.start()
    await running.watching(k8s)
    await running.executor.submit(spec())
    return running


async def test_watch_expired_relists_and_loses_no_update(k8s: KubeEmulator) -> None:
    """410 Gone: the executor lists again, reports the end it missed, and watches anew."""
    running = await slow_resuming(k8s)
    k8s.gone_on_next_watch()
    await k8s.drop_watches()
    await k8s.start(NAME)
    await k8s.succeed(NAME, message='{"n": 1}')
    update = await running.next()
    await running.watching(k8s, 3)
    await running.executor.close()
    assert (update.phase, update.outputs) == (StepPhase.SUCCEEDED, {"n": 1})
    assert len(lists(k8s)) == 2
    assert [w.query["resourceVersion"] for w in watches(k8s)] == ["100", "101", "103"]


async def test_compacted_history_answers_gone_and_is_reconciled(k8s: KubeEmulator) -> None:
    """A resume from a version the server forgot gets 410; the re-list reports the end."""
    running = await slow_resuming(k8s)
    await k8s.start(NAME)
    assert (await running.next()).phase is StepPhase.RUNNING
    await k8s.drop_watches()
    await k8s.fail(NAME, exit_code=4)
    k8s.compact()
    update = await running.next()
    await running.executor.close()
    assert (update.phase, update.exit_code) == (StepPhase.FAILED, 4)
    assert len(lists(k8s)) == 2


async def test_job_deleted_by_someone_else_fails_the_step(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """A Job deleted outside eventflow ends its attempt FAILED, saying so."""
    await harness.executor.submit(spec())
    del k8s.jobs[NAME]
    await k8s._changed("DELETED", build_job(spec(), OPTIONS))
    update = await harness.next()
    assert (update.phase, update.reason) == (StepPhase.FAILED, f"the Job {NAME} was deleted")


async def test_dropped_watch_resumes_from_the_last_version_seen(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """After a dropped stream the watch continues from the last resourceVersion: no loss."""
    await harness.executor.submit(spec())
    await k8s.start(NAME)
    assert (await harness.next()).phase is StepPhase.RUNNING
    seen = str(k8s.version)
    await k8s.drop_watches()
    await harness.watching(k8s, 2)
    await k8s.succeed(NAME)
    assert (await harness.next()).phase is StepPhase.SUCCEEDED
    assert watches(k8s)[1].query["resourceVersion"] == seen
    assert len(lists(k8s)) == 1


async def test_broken_watch_connection_resumes_without_loss(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """A connection broken mid-stream is resumed from the last version: the end is seen."""
    await harness.executor.submit(spec())
    await k8s.start(NAME)
    assert (await harness.next()).phase is StepPhase.RUNNING
    await k8s.drop_watches(abort=True)
    await k8s.succeed(NAME)
    assert (await harness.next()).phase is StepPhase.SUCCEEDED
    assert len(lists(k8s)) == 1
    assert watches(k8s)[1].query["resourceVersion"] == "102"


async def test_watch_outlasting_the_retries_is_resumed(k8s: KubeEmulator) -> None:
    """A watch refused with 500 past max_retries is tried again later; no end is lost."""
    running = Harness(k8s, max_retries=0)
    await running.executor.start()
    await running.watching(k8s)
    await running.executor.submit(spec())
    k8s.fail_next("watch", 500, count=3)
    await k8s.drop_watches()
    await k8s.succeed(NAME)
    phases = [(await running.next()).phase, (await running.next()).phase]
    await running.executor.close()
    assert phases == [StepPhase.RUNNING, StepPhase.SUCCEEDED]
    assert len(watches(k8s)) == 5


async def test_bookmark_advances_the_resume_version(k8s: KubeEmulator, harness: Harness) -> None:
    """A bookmark moves the version a resumed watch starts from, though no Job changed."""
    k8s.version += 50  # other kinds changed meanwhile
    await k8s.bookmark()
    await asyncio.sleep(0.05)
    await k8s.drop_watches()
    await harness.watching(k8s, 2)
    assert watches(k8s)[1].query["resourceVersion"] == "150"


async def test_oom_killed_pod_fails_the_step_with_the_reason(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """OOMKilled on the container is the reason; exit code 137."""
    await harness.executor.submit(spec())
    await k8s.start(NAME)
    await harness.next()
    await k8s.oom_kill(NAME)
    update = await harness.next()
    assert (update.phase, update.exit_code, update.reason) == (
        StepPhase.FAILED,
        137,
        "OOMKilled: the step used more memory than its limit; raise resources.limits.memory"
        " or make the step use less",
    )


async def test_failing_exit_code_is_the_reason(k8s: KubeEmulator, harness: Harness) -> None:
    """A container exiting 3 fails the step 'exited with code 3', outputs still read."""
    await harness.executor.submit(spec())
    await k8s.fail(NAME, exit_code=3, message='{"partial": 1}', log="boom\n")
    updates = [await harness.next(), await harness.next()]
    assert [brief(u) for u in updates] == [
        (KEY, StepPhase.RUNNING, None, None, None, None),
        (KEY, StepPhase.FAILED, 3, "exited with code 3", {"partial": 1}, "boom"),
    ]


async def test_deadline_exceeded_is_timed_out(k8s: KubeEmulator, harness: Harness) -> None:
    """Condition Failed/DeadlineExceeded -> TIMED_OUT 'timed out after Ns'."""
    await harness.executor.submit(spec(timeout_seconds=29.5))
    await k8s.start(NAME)
    await harness.next()
    await k8s.deadline_exceeded(NAME)
    update = await harness.next()
    assert (update.phase, update.reason) == (StepPhase.TIMED_OUT, "timed out after 30s")


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
async def test_image_pull_error_is_the_reason(
    k8s: KubeEmulator, harness: Harness, reason: str
) -> None:
    """A Pod waiting on an image it cannot pull names that as the reason of the failure."""
    await harness.executor.submit(spec(timeout_seconds=10))
    await k8s.image_pull_error(NAME, reason)
    await harness.next()
    await k8s.deadline_exceeded(NAME)
    update = await harness.next()
    assert (update.phase, update.exit_code, update.reason) == (
        StepPhase.FAILED,
        None,
        f"{reason}: cannot pull image 'busybox': rpc error: code = NotFound desc = failed to pull"
        ' and unpack image "nope:1"; check the image name and tag, and the imagePullSecrets',
    )


async def test_cancel_deletes_in_background_and_reports_cancelled(
    k8s: KubeEmulator, harness: Harness
) -> None:
    """cancel -> DELETE with propagationPolicy Background -> CANCELLED once the watch sees it."""
    await harness.executor.submit(spec())
    await k8s.start(NAME)
    await harness.next()
    await harness.executor.cancel(KEY)
    update = await harness.next()
    assert (update.phase, update.reason) == (StepPhase.CANCELLED, "cancelled")
    [delete] = k8s.calls("DELETE")
    assert delete.path == f"{JOBS}/{NAME}"
    assert (delete.query, delete.body) == ({"propagationPolicy": "Background"}, None)
    await harness.executor.cancel(KEY)
    assert len(k8s.calls("DELETE")) == 1


async def test_adopt_reports_a_job_that_ended_meanwhile(k8s: KubeEmulator) -> None:
    """After a restart, an adopted Job that already finished is reported at once."""
    first = Harness(k8s)
    await first.executor.start()
    await first.executor.submit(spec())
    await first.executor.close()
    await k8s.fail(NAME, exit_code=2)
    second = Harness(k8s)
    await second.executor.start()
    await second.executor.adopt([KEY])
    update = await second.next()
    await second.executor.close()
    assert (update.phase, update.exit_code, update.reason) == (
        StepPhase.FAILED,
        2,
        "exited with code 2",
    )


async def test_adopt_watches_a_running_job_to_its_end(k8s: KubeEmulator) -> None:
    """An adopted Job still running is reported when it ends, with no RUNNING repeated."""
    first = Harness(k8s)
    await first.executor.start()
    await first.executor.submit(spec())
    await first.executor.close()
    await k8s.start(NAME)
    second = Harness(k8s)
    await second.executor.start()
    await second.executor.adopt([KEY])
    await k8s.succeed(NAME)
    update = await second.next()
    await second.executor.close()
    assert update.phase is StepPhase.SUCCEEDED


async def test_adopt_of_a_missing_job_fails_it(k8s: KubeEmulator, harness: Harness) -> None:
    """A key whose Job is gone ends FAILED, saying the Job no longer exists."""
    await harness.executor.adopt([KEY])
    update = await harness.next()
    assert (update.key, update.phase, update.reason) == (
        KEY,
        StepPhase.FAILED,
        f"the Job {NAME} no longer exists in namespace eventflow",
    )


async def test_close_leaves_jobs_running(k8s: KubeEmulator, harness: Harness) -> None:
    """close() stops the watch, ends updates() and deletes nothing."""
    await harness.executor.submit(spec())
    await harness.executor.close()
    assert [u async for u in harness.stream] == []
    assert k8s.calls("DELETE") == []
    assert list(k8s.jobs) == [NAME]


async def test_logs_read_the_pod_log(k8s: KubeEmulator, harness: Harness) -> None:
    """logs() yields the Pod's log lines."""
    await harness.executor.submit(spec())
    await k8s.start(NAME, log="a\nb\n")
    assert [line async for line in harness.executor.logs(KEY)] == ["a", "b"]
    assert k8s.calls("GET", "/log")[-1].query == {"container": "step", "follow": "False"}


async def test_rate_limit_spaces_calls_past_the_burst(k8s: KubeEmulator) -> None:
    """With qps 20 and burst 2, six creates after the list take about 0.25 s or more."""
    running = Harness(k8s, qps=20, burst=2)
    await running.executor.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for attempt in range(6):
        await running.executor.submit(spec(StepKey("0190a1b2c3", "extract", attempt)))
    elapsed = loop.time() - started
    await running.executor.close()
    assert elapsed >= 0.2
    assert len(k8s.jobs) == 6


CONDITION = {"status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, None),
        ({"active": 1}, None),
        ({"conditions": [{**CONDITION, "type": "SuccessCriteriaMet"}]}, None),
        ({"conditions": [{**CONDITION, "type": "FailureTarget", "reason": "X"}]}, None),
        ({"conditions": [{**CONDITION, "type": "Complete", "status": "False"}]}, None),
        ({"conditions": [{**CONDITION, "type": "Complete"}]}, (StepPhase.SUCCEEDED, None)),
        (
            {
                "conditions": [
                    {
                        **CONDITION,
                        "type": "Failed",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    }
                ]
            },
            (StepPhase.FAILED, "BackoffLimitExceeded: Job has reached the specified backoff limit"),
        ),
        ({"conditions": [{**CONDITION, "type": "Failed"}]}, (StepPhase.FAILED, "Failed")),
        (
            {"conditions": [{**CONDITION, "type": "Failed", "reason": "DeadlineExceeded"}]},
            (StepPhase.TIMED_OUT, "timed out after 30s"),
        ),
    ],
)
def test_verdict_reads_only_final_true_conditions(
    status: dict[str, Any], expected: tuple[StepPhase, str | None] | None
) -> None:
    """Complete/Failed with status True end a Job; interim and False conditions do not."""
    assert verdict({"spec": {"activeDeadlineSeconds": 30}, "status": status}) == expected


def pod(state: dict[str, Any], name: str = "step") -> dict[str, Any]:
    container = {"name": name, "image": "busybox", "state": state}
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [container]}}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, PodReport()),
        ({"metadata": {"name": "p"}}, PodReport()),
        (pod({"running": {}}), PodReport()),
        (pod({"waiting": {"reason": "ContainerCreating"}}), PodReport()),
        (pod({"terminated": {"exitCode": 0, "reason": "Completed"}}, name="sidecar"), PodReport()),
        (pod({"terminated": {"exitCode": 0, "reason": "Completed"}}), PodReport(0, None, None)),
        (
            pod({"terminated": {"exitCode": 0, "message": 'log line\n{"a": [1]}'}}),
            PodReport(0, None, {"a": [1]}),
        ),
        (pod({"terminated": {"exitCode": 0, "message": "[1, 2]"}}), PodReport(0, None, None)),
        (
            pod({"terminated": {"exitCode": 2, "reason": "Error"}}),
            PodReport(2, "exited with code 2"),
        ),
        (
            pod({"waiting": {"reason": "InvalidImageName", "message": "bad"}}),
            PodReport(
                reason="InvalidImageName: cannot pull image 'busybox': bad; check the image"
                " name and tag, and the imagePullSecrets"
            ),
        ),
    ],
)
def test_pod_report_reads_the_step_container(
    given: dict[str, Any] | None, expected: PodReport
) -> None:
    """Exit code, outputs and reason come from the `step` container's state only."""
    assert pod_report(given) == expected


def test_newest_pod_is_the_last_created() -> None:
    """Of several Pods (an evicted one replaced), the newest is read; none gives None."""
    old = {"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:01Z"}}
    new = {"metadata": {"name": "b", "creationTimestamp": "2026-01-01T00:00:02Z"}}
    assert newest_pod([new, old]) == new
    assert newest_pod([]) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "-1"}, 0.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_seconds_only(headers: dict[str, str], expected: float | None) -> None:
    """Retry-After in seconds is honoured (never negative); dates and absence give None."""
    assert retry_after(headers) == expected


@pytest.mark.parametrize(("qps", "burst"), [(0, 1), (-1, 5), (5, 0)])
def test_bad_rate_limit_is_refused(qps: float, burst: int) -> None:
    """qps must be positive and burst at least 1; the error names both settings."""
    with pytest.raises(ConfigError) as caught:
        TokenBucket(qps, burst)
    assert str(caught.value) == (
        f"k8s.qps/burst: {qps}/{burst} is not accepted; give qps > 0 and burst >= 1"
    )


async def test_result_reads_yield_to_creates_under_way() -> None:
    """A background call (reading a finished step) waits while a create is under way, even
    between its turn and its answer, and while one waits for its turn."""
    bucket = TokenBucket(200, 1)
    await bucket.take()
    order: list[str] = []
    answered = asyncio.Event()

    async def create(name: str) -> None:
        async with bucket.urgent():
            await bucket.take()
            order.append(name)
            if name == "create 1":
                await answered.wait()  # its HTTP answer has not come yet

    async def read() -> None:
        await bucket.take(background=True)
        order.append("read")

    tasks = [asyncio.create_task(create("create 1"))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(read()))
    tasks.append(asyncio.create_task(create("create 2")))
    async with asyncio.timeout(2):
        while len(order) < 2:
            await asyncio.sleep(0.005)
    assert order == ["create 1", "create 2"]
    answered.set()
    await asyncio.gather(*tasks)
    assert order == ["create 1", "create 2", "read"]
