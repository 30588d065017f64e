"""Rule commands: every op, and malformed or unauthorised ones change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream_agent.alerts.commands import RuleCommands
from stream_agent.alerts.rules import Rule, RuleSpec, RuleStore

RULE = {"name": "door", "condition": "Is someone at the door?", "cameras": ["cam"]}


@pytest.fixture
def setup(
    tmp_path: Path,
) -> tuple[RuleCommands, RuleStore, list[tuple[str, Rule | None, Rule | None]]]:
    store = RuleStore(
        [RuleSpec.parse({"name": "fixed", "condition": "Is it dark?"})], tmp_path / "r.json"
    )
    changes: list[tuple[str, Rule | None, Rule | None]] = []
    cmds = RuleCommands(store, lambda k, b, a: changes.append((k, b, a)), token="s3cret")
    return cmds, store, changes


def send(cmds: RuleCommands, body: dict, token: str | None = "s3cret") -> dict:
    if token is not None:
        body = {**body, "token": token}
    return cmds.handle(json.dumps(body).encode())


def test_every_op(setup) -> None:  # type: ignore[no-untyped-def]
    cmds, store, changes = setup
    r = send(cmds, {"id": "1", "op": "add", "rule": RULE})
    assert r["ok"] and r["id"] == "1" and r["rule"]["name"] == "door"
    assert r["rule"]["source"] == "runtime"
    assert (
        send(cmds, {"op": "update", "name": "door", "changes": {"threshold": 0.8}})["rule"][
            "threshold"
        ]
        == 0.8
    )
    assert send(cmds, {"op": "pause", "name": "door"})["rule"]["paused"] is True
    assert send(cmds, {"op": "resume", "name": "door"})["rule"]["paused"] is False
    assert send(cmds, {"op": "pause", "name": "fixed"})["ok"]
    assert send(cmds, {"op": "get", "name": "fixed"})["rule"]["paused"] is True
    names = [x["name"] for x in send(cmds, {"op": "list"})["rules"]]
    assert names == ["fixed", "door"]
    assert send(cmds, {"op": "remove", "name": "door"})["ok"]
    assert [k for k, _, _ in changes] == ["add", "update", "pause", "resume", "pause", "remove"]
    assert "door" not in store


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b"\xff\xfe", "bad_request"),
        (json.dumps({"op": "explode", "token": "s3cret"}).encode(), "bad_request"),
        (json.dumps({"op": "add", "token": "s3cret"}).encode(), "bad_request"),
        (
            json.dumps({"op": "add", "token": "s3cret", "rule": {**RULE, "x": 1}}).encode(),
            "bad_request",
        ),
        (
            json.dumps({"op": "add", "token": "s3cret", "rule": {**RULE, "name": "Bad!"}}).encode(),
            "bad_request",
        ),
        (json.dumps({"op": "list", "token": "s3cret", "extra": 1}).encode(), "bad_request"),
        (json.dumps({"op": "remove", "name": "nope", "token": "s3cret"}).encode(), "unknown_rule"),
        (json.dumps({"op": "remove", "name": "fixed", "token": "s3cret"}).encode(), "read_only"),
        (json.dumps({"op": "add", "rule": RULE}).encode(), "unauthorised"),
        (json.dumps({"op": "add", "rule": RULE, "token": "guess"}).encode(), "unauthorised"),
        (b"x" * 70_000, "bad_request"),
    ],
)
def test_bad_commands_get_an_error_and_change_nothing(setup, payload: bytes, code: str) -> None:  # type: ignore[no-untyped-def]
    cmds, store, changes = setup
    before = [r.to_json() for r in store.all()]
    reply = cmds.handle(payload)
    assert reply["ok"] is False and reply["error"]["code"] == code and reply["error"]["message"]
    assert [r.to_json() for r in store.all()] == before and changes == []
    assert "s3cret" not in json.dumps(reply)


def test_trusted_callers_skip_the_token(setup) -> None:  # type: ignore[no-untyped-def]
    cmds, _, _ = setup
    assert cmds.handle({"op": "list"}, trusted=True)["ok"]
