"""Which request headers a webhook event keeps (as extensions) and which never reach it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sensors.webhook.config import WebhookConfig
from sensors.webhook.headers import (
    extension_name,
    header_extensions,
    kept_extensions,
    without_secrets,
)

ENV = {"env": "HOOK_SECRET"}


def config(**spec: Any) -> WebhookConfig:
    return WebhookConfig.model_validate({"path": "hooks", **spec})


@pytest.mark.parametrize(
    ("header", "extension"),
    [("X-GitHub-Event", "xgithubevent"), ("x-gitlab-event-uuid", "xgitlabeventuuid")],
)
def test_a_header_becomes_its_lower_case_alphanumerics(header: str, extension: str) -> None:
    """Dashes dropped, case folded: the CloudEvents extension naming rule."""
    assert extension_name(header) == extension


@pytest.mark.parametrize(
    ("preset", "kept"),
    [
        (
            "github",
            {
                "x-github-event": "xgithubevent",
                "x-github-delivery": "xgithubdelivery",
                "x-github-hook-id": "xgithubhookid",
            },
        ),
        (
            "gitlab",
            {
                "x-gitlab-event": "xgitlabevent",
                "x-gitlab-event-uuid": "xgitlabeventuuid",
                "x-gitlab-instance": "xgitlabinstance",
            },
        ),
        (
            "bitbucket",
            {
                "x-event-key": "xeventkey",
                "x-request-uuid": "xrequestuuid",
                "x-hook-uuid": "xhookuuid",
            },
        ),
        ("stripe", {}),
        ("slack", {}),
    ],
)
def test_each_preset_keeps_its_event_and_delivery_headers(
    preset: str, kept: dict[str, str]
) -> None:
    """Without `headers:`, a preset keeps what triggers usually filter on."""
    assert config(auth={"preset": preset, "secrets": [ENV]}).kept_headers == kept


def test_without_a_preset_no_header_is_kept_and_the_list_replaces_the_default() -> None:
    """No auth: nothing kept; `headers:` given: exactly those, lower-cased."""
    assert config().kept_headers == {}
    github = config(auth={"preset": "github", "secrets": [ENV]}, headers=["X-Request-Id"])
    assert github.kept_headers == {"x-request-id": "xrequestid"}


@pytest.mark.parametrize(
    ("headers", "auth", "message"),
    [
        (
            ["Authorization"],
            None,
            "Value error, headers[0]: 'Authorization' carries a credential and never reaches"
            " an event; remove it from headers",
        ),
        (
            ["x-github-event", "cookie"],
            None,
            "Value error, headers[1]: 'cookie' carries a credential and never reaches an event;"
            " remove it from headers",
        ),
        (
            ["X-Hub-Signature-256"],
            {"preset": "github", "secrets": [ENV]},
            "Value error, headers[0]: 'X-Hub-Signature-256' carries a credential and never"
            " reaches an event; remove it from headers",
        ),
        (
            ["x-my-sig"],
            {"hmac": {"header": "X-My-Sig"}, "secrets": [ENV]},
            "Value error, headers[0]: 'x-my-sig' carries a credential and never reaches an"
            " event; remove it from headers",
        ),
        (
            ["x-github-hook-installation-target-type"],
            None,
            "Value error, headers[0]: 'x-github-hook-installation-target-type' would become the"
            " extension 'xgithubhookinstallationtargettype'; CloudEvents extension names are"
            " 1-20 letters or digits, so this header cannot be kept; read it in an event"
            " template instead",
        ),
        (
            ["eventflow-sensor"],
            None,
            "Value error, headers[0]: 'eventflow-sensor' would become the extension"
            " 'eventflowsensor', a name CloudEvents or eventflow reserve; read it in an event"
            " template instead",
        ),
        (
            ["x-a-b", "x-ab"],
            None,
            "Value error, headers[1]: 'x-ab' and 'x-a-b' would both become the extension"
            " 'xab'; keep one of them",
        ),
        (
            ["x event"],
            None,
            "Value error, headers[0]: 'x event' is not an HTTP header name, e.g. x-github-event",
        ),
    ],
)
def test_an_allow_list_entry_that_cannot_be_kept_is_refused_at_load(
    headers: list[str], auth: dict[str, Any] | None, message: str
) -> None:
    """Credentials, unrepresentable, reserved and colliding names: a load-time error."""
    with pytest.raises(ValidationError) as caught:
        config(headers=headers, auth=auth)
    assert [error["msg"] for error in caught.value.errors()] == [message]


def test_header_extensions_take_the_kept_headers_present() -> None:
    """Absent kept headers add nothing; others are ignored."""
    kept = kept_extensions(["x-github-event", "x-github-delivery"], frozenset())
    headers = {"x-github-event": "push", "user-agent": "GitHub-Hookshot/1"}
    assert header_extensions(headers, kept) == {"xgithubevent": "push"}


def test_templates_see_every_header_but_the_credentials() -> None:
    """Authorization, cookies and the scheme's signature header are dropped, any case."""
    headers = {
        "Authorization": "Bearer t",
        "Cookie": "s=1",
        "X-Hub-Signature-256": "sha256=00",
        "X-GitHub-Event": "push",
    }
    assert without_secrets(headers, frozenset({"x-hub-signature-256"})) == {
        "x-github-event": "push"
    }
