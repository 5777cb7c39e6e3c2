"""The local executor against real processes (sys.executable -c ...): no mocks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventflow.errors import PermanentError
from eventflow.executors.local import RESTARTED_REASON, STOPPED_REASON, LocalExecutor
from eventflow.executors.protocol import StepKey, StepPhase, StepSpec, StepUpdate

PY = sys.executable
KEY = StepKey("run1", "extract", 1)
MARKER = "\n[eventflow: log capped here; the rest of the output dropped]\n"
SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"


def step(
    code: str,
    *args: str,
    key: StepKey = KEY,
    timeout_seconds: float | None = None,
    working_dir: str | None = None,
) -> StepSpec:
    return StepSpec(
        key, [PY, "-c", code], args, working_dir=working_dir, timeout_seconds=timeout_seconds
    )


def summary(update: StepUpdate) -> tuple[object, ...]:
    return (update.phase, update.exit_code, update.reason, update.outputs, update.log_tail)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def gone(pid: int) -> bool:
    """Whether `pid` dies within a second (a killed process takes a moment to be reaped)."""
    for _ in range(100):
        if not alive(pid):
            return True
        await asyncio.sleep(0.01)
    return False


async def take(stream: AsyncIterator[StepUpdate], count: int) -> list[StepUpdate]:
    async with asyncio.timeout(10):
        return [await anext(stream) for _ in range(count)]


async def until_ready(executor: LocalExecutor) -> None:
    """Wait until SLEEPER printed 'ready': it is past startup, its signal handlers are set."""
    async with asyncio.timeout(10):
        while executor.log_text(KEY) != "ready\n":
            await asyncio.sleep(0.01)


async def run_to_end(executor: LocalExecutor, spec: StepSpec) -> StepUpdate:
    """Submit `spec` on a fresh updates() stream; check RUNNING came first; the terminal update."""
    stream = executor.updates()
    await executor.submit(spec)
    running, terminal = await take(stream, 2)
    assert (running.key, running.phase) == (spec.key, StepPhase.RUNNING)
    assert terminal.key == spec.key
    assert running.at <= terminal.at
    return terminal


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail the test if any asyncio task outlives it."""
    yield
    current = asyncio.current_task()
    left = [task.get_name() for task in asyncio.all_tasks() if task is not current]
    assert left == []


@pytest.fixture
async def executor(no_leaked_tasks: None, tmp_path: Path) -> AsyncIterator[LocalExecutor]:
    local = LocalExecutor(
        tmp_path / "work", log_tail_lines=3, kill_grace_seconds=0.5, max_log_bytes=65_536
    )
    await local.start()
    yield local
    await local.close()


async def test_success_reports_outputs_from_the_outputs_file(executor: LocalExecutor) -> None:
    """A step exiting 0 succeeds; the JSON object in EVENTFLOW_OUTPUT_FILE is its outputs."""
    code = (
        "import os, json\nprint('hello')\n"
        "with open(os.environ['EVENTFLOW_OUTPUT_FILE'], 'w') as f: json.dump({'rows': 3}, f)\n"
        "print('{\"ignored\": true}')"
    )
    terminal = await run_to_end(executor, step(code))
    assert summary(terminal) == (
        StepPhase.SUCCEEDED,
        0,
        None,
        {"rows": 3},
        'hello\n{"ignored": true}',
    )
    assert terminal.at.tzinfo is not None
    assert executor.log_text(KEY) == 'hello\n{"ignored": true}\n'


@pytest.mark.parametrize(
    ("code", "outputs"),
    [
        (
            "print('a'); import sys; print('{\"k\": [1]}', file=sys.stderr); print(); print('  ')",
            {"k": [1]},
        ),
        ("print('{\"first\": 1}'); print('last')", None),
        ("print('[1, 2]')", None),
        ("print('\"text\"')", None),
        ("import sys; sys.stdout.write('{\"no_newline\": 1}')", {"no_newline": 1}),
        ("pass", None),
    ],
)
async def test_last_non_empty_line_is_outputs_when_it_is_a_json_object(
    executor: LocalExecutor, code: str, outputs: object
) -> None:
    """Without an outputs file, the last non-empty output line counts only if it is an object."""
    terminal = await run_to_end(executor, step(code))
    assert (terminal.phase, terminal.outputs) == (StepPhase.SUCCEEDED, outputs)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1]", "holds an array"),
        ("true", "holds a boolean"),
        ("3.5", "holds a number"),
        ("null", "holds null"),
        ('"x"', "holds a string"),
        ("{oops", ": Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ],
)
async def test_outputs_file_that_is_not_an_object_fails_the_attempt(
    executor: LocalExecutor, tmp_path: Path, content: str, problem: str
) -> None:
    """An outputs file holding anything but a JSON object turns an exit 0 into FAILED."""
    code = f"import os; open(os.environ['EVENTFLOW_OUTPUT_FILE'], 'w').write({content!r})"
    terminal = await run_to_end(executor, step(code))
    path = tmp_path / "work" / "run1" / "extract.1.outputs.json"
    reason = (
        f"outputs file is not a JSON object: {path}{'' if problem[0] == ':' else ' '}{problem}; "
        'write one JSON object there, such as {"rows": 3}'
    )
    assert summary(terminal) == (StepPhase.FAILED, 0, reason, None, "")


async def test_non_zero_exit_fails_with_its_code(executor: LocalExecutor) -> None:
    """Exit code 3 is FAILED, 'exited with code 3', with the log tail (last 3 lines)."""
    code = "import sys\nfor i in range(5): print(i)\nsys.exit(3)"
    terminal = await run_to_end(executor, step(code))
    assert summary(terminal) == (StepPhase.FAILED, 3, "exited with code 3", None, "2\n3\n4")


async def test_death_by_signal_is_named(executor: LocalExecutor) -> None:
    """A process killed by SIGKILL is FAILED with exit code -9 and the signal's name."""
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    terminal = await run_to_end(executor, step(code))
    assert summary(terminal) == (StepPhase.FAILED, -9, "killed by signal SIGKILL", None, "")


async def test_timeout_kills_the_process_and_its_grandchild(executor: LocalExecutor) -> None:
    """After timeout_seconds the whole process group gets SIGTERM: grandchildren die too."""
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True); time.sleep(60)"
    )
    terminal = await run_to_end(executor, step(code, timeout_seconds=0.3))
    assert terminal.log_tail is not None
    grandchild = int(terminal.log_tail)
    assert summary(terminal) == (
        StepPhase.TIMED_OUT,
        -15,
        "timed out after 0.3s",
        None,
        str(grandchild),
    )
    assert await gone(grandchild)


async def test_timeout_escalates_to_sigkill_after_the_grace(executor: LocalExecutor) -> None:
    """A process ignoring SIGTERM is SIGKILLed once kill_grace_seconds passed."""
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True); time.sleep(60)"
    )
    terminal = await run_to_end(executor, step(code, timeout_seconds=0.2))
    assert summary(terminal) == (StepPhase.TIMED_OUT, -9, "timed out after 0.2s", None, "ready")


async def test_cancel_kills_a_running_step(executor: LocalExecutor) -> None:
    """cancel() of a running attempt ends it CANCELLED; cancelling it again does nothing."""
    stream = executor.updates()
    await executor.submit(step(SLEEPER))
    (running,) = await take(stream, 1)
    assert running.phase is StepPhase.RUNNING
    await until_ready(executor)
    await executor.cancel(KEY)
    (terminal,) = await take(stream, 1)
    assert summary(terminal) == (StepPhase.CANCELLED, -15, "cancelled", None, "ready")
    await executor.cancel(KEY)
    await executor.cancel(StepKey("run1", "unknown", 1))
    other = StepKey("run1", "other", 1)
    await executor.submit(step("pass", key=other))
    assert [(u.key, u.phase) for u in await take(stream, 2)] == [
        (other, StepPhase.RUNNING),
        (other, StepPhase.SUCCEEDED),
    ]


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (["nosuchcmd"], "command not found: 'nosuchcmd'"),
        ([], "command is empty: a local step needs a command to run"),
    ],
)
async def test_a_command_that_cannot_start_fails_without_running(
    executor: LocalExecutor, command: list[str], reason: str
) -> None:
    """A missing or empty command is one FAILED update, no RUNNING before it."""
    stream = executor.updates()
    await executor.submit(StepSpec(KEY, command))
    (terminal,) = await take(stream, 1)
    assert summary(terminal) == (StepPhase.FAILED, None, reason, None, "")


async def test_a_file_without_execute_permission_fails_clearly(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    """A command file that is not executable is FAILED with a permission message."""
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    stream = executor.updates()
    await executor.submit(StepSpec(KEY, [str(script)]))
    (terminal,) = await take(stream, 1)
    reason = (
        f"permission denied: '{script}' is not executable; "
        "make it executable (chmod +x) or run it through its interpreter"
    )
    assert summary(terminal) == (StepPhase.FAILED, None, reason, None, "")


async def test_a_missing_working_dir_fails_clearly(executor: LocalExecutor, tmp_path: Path) -> None:
    """A working_dir that does not exist is FAILED before any process starts."""
    stream = executor.updates()
    missing = tmp_path / "nope"
    await executor.submit(step("pass", working_dir=str(missing)))
    (terminal,) = await take(stream, 1)
    reason = (
        f"working directory does not exist: '{missing}'; create it or change the step's workingDir"
    )
    assert summary(terminal) == (StepPhase.FAILED, None, reason, None, "")


async def test_env_cwd_and_shell_metacharacters_reach_the_process_verbatim(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    """Arguments pass without a shell; env is the server's, then the step's, then eventflow's."""
    args = ["a; touch pwned", "$(touch pwned)", "`touch pwned`", "'q' \"dq\"", "*", "", "x\ny"]
    code = (
        "import json, os, sys\nnames = ['PATH', 'GREETING', 'EVENTFLOW_RUN_ID', "
        "'EVENTFLOW_STEP', 'EVENTFLOW_ATTEMPT', 'EVENTFLOW_OUTPUT_FILE']\n"
        "env = {n: os.environ[n] for n in names}\n"
        "seen = {'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': env}\n"
        "json.dump(seen, open(os.environ['EVENTFLOW_OUTPUT_FILE'], 'w'))"
    )
    spec = StepSpec(
        StepKey("run1", "extract", 2),
        [PY, "-c", code],
        args,
        env={"GREETING": "hi $USER", "EVENTFLOW_STEP": "spoofed"},
        working_dir=str(tmp_path),
        image="ignored:latest",
    )
    terminal = await run_to_end(executor, spec)
    assert terminal.outputs == {
        "argv": args,
        "cwd": str(tmp_path),
        "env": {
            "PATH": os.environ["PATH"],
            "GREETING": "hi $USER",
            "EVENTFLOW_RUN_ID": "run1",
            "EVENTFLOW_STEP": "extract",
            "EVENTFLOW_ATTEMPT": "2",
            "EVENTFLOW_OUTPUT_FILE": str(tmp_path / "work" / "run1" / "extract.2.outputs.json"),
        },
    }
    assert not (tmp_path / "pwned").exists()


async def test_five_megabytes_of_output_do_not_block_and_the_log_is_capped(
    executor: LocalExecutor,
) -> None:
    """A chatty process runs to its end; the log keeps the first max_log_bytes and a marker."""
    line = "x" * 99 + "\n"
    code = f"import sys\nfor _ in range(50_000): sys.stdout.write({line!r})\nprint('done')"
    terminal = await run_to_end(executor, step(code))
    assert summary(terminal) == (StepPhase.SUCCEEDED, 0, None, None, f"{line * 2}done")
    assert executor.log_text(KEY) == (line * 50_000)[:65_536] + MARKER


async def test_logs_follow_a_running_step_to_its_end(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    """logs(follow=True) yields lines as they come and stops once the attempt ended."""
    go = tmp_path / "go"
    code = (
        "import os, time\nprint('one', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        "print('two')\nprint('three', end='')"
    )
    await executor.submit(step(code))
    followed = executor.logs(KEY, follow=True)
    async with asyncio.timeout(10):
        assert await anext(followed) == "one"
        go.touch()
        assert [line async for line in followed] == ["two", "three"]
    assert [line async for line in executor.logs(KEY)] == ["one", "two", "three"]
    assert [line async for line in executor.logs(StepKey("run1", "unknown", 1))] == []
    assert [line async for line in executor.logs(StepKey("..", "x", 1))] == []
    assert executor.log_text(StepKey("run1", "unknown", 1)) is None


async def test_a_second_submit_of_a_key_starts_no_second_process(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    """submit is idempotent by key, whether the attempt is running or finished."""
    count = tmp_path / "count"
    spec = step(f"open({str(count)!r}, 'a').write('x')")
    stream = executor.updates()
    await asyncio.gather(executor.submit(spec), executor.submit(spec))
    assert [u.phase for u in await take(stream, 2)] == [StepPhase.RUNNING, StepPhase.SUCCEEDED]
    await executor.submit(spec)
    other = StepKey("run1", "other", 1)
    await executor.submit(step("pass", key=other))
    assert [u.key for u in await take(stream, 2)] == [other, other]
    assert count.read_text() == "x"


def leave_orphan(
    work: Path, key: StepKey, start_time: str | None = None
) -> subprocess.Popen[bytes]:
    """Start a step as a previous eventflow would have, leaving its log and pid file."""
    run_dir = work / key.run_id
    run_dir.mkdir(parents=True)
    with (run_dir / f"{key.step}.{key.attempt}.log").open("wb") as log_file:
        orphan = subprocess.Popen(
            [PY, "-c", SLEEPER], stdout=log_file, stderr=log_file, start_new_session=True
        )
    stat = Path(f"/proc/{orphan.pid}/stat").read_text()
    start = start_time or stat[stat.rindex(")") + 2 :].split()[19]
    (run_dir / f"{key.step}.{key.attempt}.pid").write_text(f"{orphan.pid} {start}\n")
    return orphan


async def test_adopt_kills_a_live_orphan_and_reports_it_interrupted(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    """adopt() kills the process a previous eventflow left running and reports FAILED."""
    orphan = leave_orphan(tmp_path / "work", KEY)
    try:
        await until_ready(executor)
        stream = executor.updates()
        await executor.adopt([KEY])
        (terminal,) = await take(stream, 1)
        assert summary(terminal) == (StepPhase.FAILED, None, RESTARTED_REASON, None, "ready")
        assert orphan.wait(timeout=5) == -15
        assert not (tmp_path / "work" / "run1" / "extract.1.pid").exists()
        await executor.submit(step("pass"))
        await executor.adopt([KEY])
        await executor.close()
        assert [u async for u in stream] == []
    finally:
        orphan.kill()
        orphan.wait()


async def test_adopt_spares_a_process_whose_start_time_differs(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    """A reused pid (another start time) is not killed; the attempt is still reported FAILED."""
    stranger = leave_orphan(tmp_path / "work", KEY, start_time="1")
    try:
        stream = executor.updates()
        missing = StepKey("run2", "load", 1)
        await executor.adopt([KEY, missing])
        updates = sorted(await take(stream, 2), key=lambda u: u.key)
        assert [(u.key, u.phase, u.reason) for u in updates] == [
            (KEY, StepPhase.FAILED, RESTARTED_REASON),
            (missing, StepPhase.FAILED, RESTARTED_REASON),
        ]
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


async def test_close_interrupts_a_running_step_and_ends_updates(executor: LocalExecutor) -> None:
    """close() kills running attempts, reports them FAILED, ends updates(), refuses submits."""
    stream = executor.updates()
    await executor.submit(step(SLEEPER))
    (running,) = await take(stream, 1)
    assert running.phase is StepPhase.RUNNING
    await until_ready(executor)
    await executor.close()
    assert [summary(u) async for u in stream] == [
        (StepPhase.FAILED, -15, STOPPED_REASON, None, "ready")
    ]
    with pytest.raises(PermanentError) as raised:
        await executor.submit(step("pass", key=StepKey("run1", "late", 1)))
    assert (
        str(raised.value) == "step run1/late#1: the local executor is closed; submit before close()"
    )


async def test_updates_has_a_single_consumer(executor: LocalExecutor) -> None:
    """A second updates() call is refused instead of splitting the stream."""
    executor.updates()
    with pytest.raises(RuntimeError) as raised:
        executor.updates()
    assert str(raised.value) == "LocalExecutor.updates() has a single consumer, already iterating"


@pytest.mark.parametrize(("run_id", "name"), [("..", "s"), ("r", "a/b"), ("", "s"), ("r", ".")])
async def test_a_key_that_would_escape_the_work_dir_is_refused(
    executor: LocalExecutor, run_id: str, name: str
) -> None:
    """Run ids and step names become file names, so '/', '.' and '..' are refused."""
    key = StepKey(run_id, name, 1)
    with pytest.raises(PermanentError) as raised:
        await executor.submit(step("pass", key=key))
    bad = run_id if run_id in {"..", ""} else name
    assert str(raised.value) == (
        f"step {key}: {bad!r} cannot be a file name under the work dir; "
        "use a run id and a step name without '/' that are not '.' or '..'"
    )


async def test_a_descendant_that_left_the_session_does_not_hang_the_attempt(
    executor: LocalExecutor,
) -> None:
    """A daemon holding the output pipe open delays the end by the grace period at most."""
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        "print(child.pid)"
    )
    terminal = await run_to_end(executor, step(code))
    assert terminal.log_tail is not None
    daemon = int(terminal.log_tail)
    try:
        assert summary(terminal) == (StepPhase.SUCCEEDED, 0, None, None, str(daemon))
    finally:
        os.kill(daemon, 9)
