"""The job controller (and kubelet) side of the Kubernetes API emulator: what a test drives.

`JobController.start`, `succeed`, `fail`, `oom_kill`, `image_pull_error` and
`deadline_exceeded` move a Job and its Pod as Kubernetes' job controller and kubelet would,
with real status fields (conditions, containerStatuses, termination messages). The
emulator (tests/k8s_emulator.py) is a JobController; this module serves no HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobController:
    namespace: str
    jobs: dict[str, dict[str, Any]]
    pods: dict[str, dict[str, Any]]
    logs: dict[str, str]
    # the emulator's: records a change in the history and tells the watches
    _changed: Callable[[str, dict[str, Any]], Awaitable[None]]

    async def start(self, name: str, log: str = "") -> dict[str, Any]:
        """The Job's Pod is scheduled and its container runs: status.active becomes 1."""
        job = self.jobs[name]
        pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": self.namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": stamp(),
                "labels": {
                    **job["spec"]["template"]["metadata"]["labels"],
                    "job-name": name,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": job["metadata"]["uid"],
                },
            },
            "spec": job["spec"]["template"]["spec"],
            "status": {"phase": "Running", "containerStatuses": [self._container({"running": {}})]},
        }
        self.pods[pod_name] = pod
        self.logs[pod_name] = log
        job["status"] = {"active": 1, "startTime": stamp(), "ready": 1}
        await self._changed("MODIFIED", job)
        return pod

    async def succeed(self, name: str, message: str = "", log: str = "") -> None:
        await self._finish(name, 0, "Completed", message, log)
        conditions = [self._condition("SuccessCriteriaMet"), self._condition("Complete")]
        await self._set_job(name, {"succeeded": 1, "completionTime": stamp()}, conditions)

    async def fail(
        self, name: str, exit_code: int = 1, reason: str = "Error", message: str = "", log: str = ""
    ) -> None:
        await self._finish(name, exit_code, reason, message, log)
        await self._job_failed(
            name, "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        )

    async def oom_kill(self, name: str) -> None:
        await self.fail(name, 137, "OOMKilled")

    async def image_pull_error(self, name: str, reason: str = "ErrImagePull") -> None:
        """The Pod stays Pending, its container waiting on an image it cannot pull."""
        pod = await self.start(name)
        message = 'rpc error: code = NotFound desc = failed to pull and unpack image "nope:1"'
        pod["status"] = {
            "phase": "Pending",
            "containerStatuses": [
                self._container({"waiting": {"reason": reason, "message": message}})
            ],
        }

    async def deadline_exceeded(self, name: str) -> None:
        """activeDeadlineSeconds passed: the controller fails the Job (its Pods stay, killed)."""
        await self._job_failed(
            name, "DeadlineExceeded", "Job was active longer than specified deadline"
        )

    # --- internals -----------------------------------------------------------------------

    def _container(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": "step",
            "image": "busybox",
            "ready": "running" in state,
            "restartCount": 0,
            "state": state,
        }

    def _condition(
        self, kind: str, reason: str | None = None, message: str | None = None
    ) -> dict[str, Any]:
        found = {
            "type": kind,
            "status": "True",
            "lastProbeTime": stamp(),
            "lastTransitionTime": stamp(),
        }
        return found | ({"reason": reason, "message": message} if reason else {})

    def _pod_of(self, name: str) -> dict[str, Any] | None:
        found = [p for p in self.pods.values() if p["metadata"]["labels"]["job-name"] == name]
        return found[-1] if found else None

    async def _finish(self, name: str, code: int, reason: str, message: str, log: str) -> None:
        pod = self._pod_of(name) or await self.start(name)
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": stamp(),
            "finishedAt": stamp(),
        }
        if message:
            terminated["message"] = message
        phase = "Succeeded" if code == 0 else "Failed"
        pod["status"] = {
            "phase": phase,
            "containerStatuses": [self._container({"terminated": terminated})],
        }
        self.logs[pod["metadata"]["name"]] = log

    async def _job_failed(self, name: str, reason: str, message: str) -> None:
        conditions = [
            self._condition("FailureTarget", reason, message),
            self._condition("Failed", reason, message),
        ]
        await self._set_job(name, {"failed": 1}, conditions)

    async def _set_job(
        self, name: str, status: dict[str, Any], conditions: list[dict[str, Any]]
    ) -> None:
        job = self.jobs[name]
        job["status"] = {
            "startTime": job["status"].get("startTime", stamp()),
            **status,
            "conditions": conditions,
        }
        await self._changed("MODIFIED", job)
