"""Rule commands (add, update, pause, resume, remove, get, list) for MQTT and WebSocket alike.

A command is one JSON object with an ``op``; the reply says ``ok`` true with the rule(s), or
false with an ``error`` {``code``, ``message``}, and echoes the command's ``id``. A command that
is malformed, names an unknown rule, or lacks the configured token changes nothing.
:class:`RuleCommands` works on the :class:`~stream_agent.alerts.rules.RuleStore` and tells its
``on_change`` callback (the service) what changed, after the store has persisted it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from stream_agent.alerts.errors import AlertsError, InvalidRule, RuleError, Unauthorised
from stream_agent.alerts.rules import Rule, RuleSpec, RuleStore, describe_errors, field_errors

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 65_536
ChangeKind = Literal["add", "update", "pause", "resume", "remove"]
OnChange = Callable[[ChangeKind, Rule | None, Rule | None], None]
"""(what, the rule before or None, the rule after or None)."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(default=None, max_length=128)
    token: str | None = Field(default=None, repr=False, max_length=1024)


class AddCommand(_Command):
    op: Literal["add"]
    rule: dict[str, Any]


class UpdateCommand(_Command):
    op: Literal["update"]
    name: str
    changes: dict[str, Any]


class NamedCommand(_Command):
    op: Literal["pause", "resume", "remove", "get"]
    name: str


class ListCommand(_Command):
    op: Literal["list"]


Command = Annotated[
    AddCommand | UpdateCommand | NamedCommand | ListCommand, Field(discriminator="op")
]
_COMMAND: TypeAdapter[Command] = TypeAdapter(Command)


def _error(
    cid: object,
    op: object,
    code: str,
    message: str,
    fields: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """An error reply; ``fields`` lists per-field problems (``{"field", "message"}``)."""
    return {
        "id": cid if isinstance(cid, str) else None,
        "op": op if isinstance(op, str) else None,
        "ok": False,
        "error": {
            "code": code,
            "message": message,
            "fields": [{"field": f, "message": m} for f, m in fields],
        },
    }


class RuleCommands:
    """Validates and carries out rule commands. ``token`` None: no token required."""

    def __init__(
        self,
        store: RuleStore,
        on_change: OnChange,
        token: str | None = None,
        check: Callable[[RuleSpec], None] | None = None,
    ) -> None:
        """``check`` vets a new or changed rule against the daemon (e.g. its cameras exist)
        and raises :class:`~stream_agent.alerts.errors.InvalidRule` to refuse it."""
        self._store = store
        self._on_change = on_change
        self._token = token
        self._check = check

    def handle(self, payload: bytes | str | dict[str, Any], *, trusted: bool = False) -> dict:
        """Carry out one command and return the reply. ``trusted`` skips the token check (for
        a WebSocket connection that has already authenticated)."""
        raw: object = payload
        if isinstance(payload, bytes | str):
            if len(payload) > MAX_COMMAND_BYTES:
                return _error(None, None, "bad_request", "command larger than 64 KiB")
            try:
                raw = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                return _error(None, None, "bad_request", f"not JSON: {exc}")
        if not isinstance(raw, dict):
            return _error(None, None, "bad_request", "a command is a JSON object")
        cid, op = raw.get("id"), raw.get("op")
        if not trusted and self._token is not None:
            given = raw.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode(), self._token.encode()
            ):
                log.warning("rule command refused: missing or wrong token (op %r)", op)
                return _error(cid, op, Unauthorised.code, "missing or wrong command token")
        try:
            command = _COMMAND.validate_python(raw)
        except ValidationError as exc:
            return _error(cid, op, "bad_request", describe_errors(exc), field_errors(exc))
        try:
            return {"id": command.id, "op": command.op, "ok": True, **self._run(command)}
        except InvalidRule as exc:
            return _error(command.id, command.op, exc.code, str(exc), exc.fields)
        except RuleError as exc:
            return _error(command.id, command.op, exc.code, str(exc))
        except AlertsError as exc:
            log.error("rule command %s failed: %s", command.op, exc)
            return _error(command.id, command.op, exc.code, str(exc))

    def _run(self, command: Command) -> dict[str, Any]:
        store = self._store
        if isinstance(command, ListCommand):
            return {"rules": [r.to_json() for r in store.all()]}
        if isinstance(command, AddCommand):
            spec = RuleSpec.parse(command.rule)
            if self._check is not None:
                self._check(spec)
            after = store.add(spec)
            self._notify("add", None, after)
            return {"rule": after.to_json()}
        if isinstance(command, UpdateCommand):
            before = store.get(command.name)
            if self._check is not None and before.source == "runtime":
                self._check(RuleSpec.parse({**before.spec.to_json(), **command.changes}))
            after = store.update(command.name, command.changes)
            self._notify("update", before, after)
            return {"rule": after.to_json()}
        if command.op == "get":
            return {"rule": store.get(command.name).to_json()}
        if command.op == "remove":
            before = store.remove(command.name)
            self._notify("remove", before, None)
            return {"rule": before.to_json()}
        before = store.get(command.name)
        paused = command.op == "pause"
        after = store.set_paused(command.name, paused)
        self._notify("pause" if paused else "resume", before, after)
        return {"rule": after.to_json()}

    def _notify(self, kind: ChangeKind, before: Rule | None, after: Rule | None) -> None:
        rule = after or before
        name = rule.name if rule is not None else "?"
        log.info("rule %s: %s", name, kind)
        try:
            self._on_change(kind, before, after)
        except Exception:
            log.exception("rule change callback failed after %s of %s", kind, name)
