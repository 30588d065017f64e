"""The alerts package's exception hierarchy.

Everything here derives from :class:`AlertsError` (a
:class:`~stream_agent.errors.StreamAgentError`), whose ``code`` is what a command
reply, a WebSocket error or the CLI shows the user.
"""

from __future__ import annotations

from stream_agent.errors import StreamAgentError


class AlertsError(StreamAgentError):
    """Base of the alerts subsystem's errors."""

    code = "internal"


class RuleError(AlertsError):
    """A rule command cannot be carried out as asked (nothing was changed)."""

    code = "bad_request"


class InvalidRule(RuleError):
    """A rule or a change to one does not validate. ``fields``: (field, message) per problem,
    the field named as in a rule's keys (``cooldown_s``, ``gates.motion``), for forms."""

    code = "bad_request"

    def __init__(self, message: str, fields: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class UnknownRule(RuleError):
    """No rule has that name."""

    code = "unknown_rule"


class RuleExists(RuleError):
    """A rule of that name already exists."""

    code = "rule_exists"


class ReadOnlyRule(RuleError):
    """The rule comes from the config file: it can be paused and resumed, not changed here."""

    code = "read_only"


class Unauthorised(RuleError):
    """A command lacked the configured command token, or carried a wrong one."""

    code = "unauthorised"


class StoreError(AlertsError):
    """A persisted file (rules, history, outbox) cannot be read or written."""

    code = "store_error"
