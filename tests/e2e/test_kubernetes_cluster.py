"""The Kubernetes executor against a real cluster: a busybox step runs as a Job and succeeds.

Runs only when EVENTFLOW_TEST_KUBECONFIG names a kubeconfig (its current context is used,
or EVENTFLOW_TEST_CONTEXT); the namespace is EVENTFLOW_TEST_NAMESPACE, default "default".
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from eventflow.executors.kubernetes import KubernetesExecutor
from eventflow.executors.manifests import JobOptions
from eventflow.executors.protocol import StepKey, StepPhase, StepSpec

KUBECONFIG = os.environ.get("EVENTFLOW_TEST_KUBECONFIG")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not KUBECONFIG,
        reason="set EVENTFLOW_TEST_KUBECONFIG to a kubeconfig file to run steps on a real cluster",
    ),
]


async def test_busybox_step_succeeds_with_outputs_on_a_real_cluster() -> None:
    """A busybox step writing JSON to its termination log ends SUCCEEDED with those outputs."""
    executor = KubernetesExecutor(
        JobOptions(
            namespace=os.environ.get("EVENTFLOW_TEST_NAMESPACE", "default"),
            ttl_seconds_after_finished=60,
        ),
        kubeconfig=KUBECONFIG,
        context=os.environ.get("EVENTFLOW_TEST_CONTEXT"),
    )
    key = StepKey(uuid.uuid4().hex[:12], "hello", 1)
    step = StepSpec(
        key,
        command=[
            "sh",
            "-c",
            'echo hello; echo "{\\"greeting\\": \\"hi\\"}" > "$EVENTFLOW_OUTPUT_FILE"',
        ],
        image="busybox:1.36",
        timeout_seconds=240,
    )
    await executor.start()
    updates = executor.updates()
    try:
        await executor.submit(step)
        async with asyncio.timeout(280):
            update = await anext(updates)
            while not update.phase.terminal:
                update = await anext(updates)
    finally:
        await executor.close()
    assert (update.key, update.phase, update.exit_code, update.reason) == (
        key,
        StepPhase.SUCCEEDED,
        0,
        None,
    )
    assert update.outputs == {"greeting": "hi"}
    assert update.log_tail == "hello"
