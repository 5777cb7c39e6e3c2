"""`eventflow serve` as a user runs it, with TLS from api.tls_* settings and `--dev` inline
secrets: a signed delivery over HTTPS is taken; without `--dev` an inline secret stops the start."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIXTURES, free_port, github_signed

EVENTFLOW = str(Path(sys.executable).with_name("eventflow"))
PUSH = (FIXTURES / "github" / "push--payload.json").read_bytes()
SENSOR = """
apiVersion: eventflow.io/v1alpha1
kind: Sensor
metadata: {name: github}
spec:
  webhook:
    path: github
    auth: {preset: github, secrets: [{value: "a-dev-only-secret"}]}
"""
INLINE = (
    "an inline secret is not accepted: YAML ends up in git; use {env: NAME} for an environment"
    " variable or {file: /path} for a file such as a Secret mount"
)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl as an operator would."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("workers", ["0", "2"], ids=["one-process", "intake-workers"])
def test_dev_mode_over_tls_takes_a_delivery_signed_with_the_inline_secret(
    tmp_path: Path, workers: str
) -> None:
    """HTTPS with the configured cert; the inline secret verifies; a loud warning is logged."""
    cert, key = self_signed(tmp_path)
    (tmp_path / "sensor.yaml").write_text(SENSOR)
    port = free_port()
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "EVENTFLOW_API__TLS_CERT_FILE": str(cert),
        "EVENTFLOW_API__TLS_KEY_FILE": str(key),
        "EVENTFLOW_SHUTDOWN_GRACE_SECONDS": "1",
    }
    command = [EVENTFLOW, "serve", str(tmp_path / "sensor.yaml"), "--dev", "--port", str(port)]
    command += ["--intake-workers", workers]
    with log.open("w") as output:
        server = subprocess.Popen(
            [*command, "--data-dir", str(tmp_path / "data")],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted) as client:
            deadline = time.monotonic() + 60  # a loaded CI machine starts slowly
            while True:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            headers = github_signed("a-dev-only-secret", "d-tls", PUSH)
            reply = client.post("/webhooks/github", content=PUSH, headers=headers)
            assert (reply.status_code, reply.json()) == (202, {"id": "d-tls"})
            with httpx.Client(verify=False) as plain:
                refused = plain.post(
                    f"https://127.0.0.1:{port}/webhooks/github", content=PUSH
                ).status_code
            assert refused == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "DEVELOPMENT MODE: inline secrets are accepted" in log.read_text()
    assert "a-dev-only-secret" not in log.read_text()


def test_an_inline_secret_without_dev_starts_nothing(tmp_path: Path) -> None:
    """The usual message, exit 1, and the secret not echoed."""
    (tmp_path / "sensor.yaml").write_text(SENSOR)
    result = subprocess.run(
        [EVENTFLOW, "serve", str(tmp_path / "sensor.yaml"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "EVENTFLOW_DATA_DIR": str(tmp_path / "data")},
    )
    assert result.returncode == 1
    assert INLINE in result.stderr
    assert "problem(s) in the resources; nothing started" in result.stderr
    assert "a-dev-only-secret" not in result.stderr + result.stdout
