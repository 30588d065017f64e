"""The alerts section of the daemon config: :class:`AlertsConfig` with its :class:`MqttConfig`.

Both reject unknown keys and are frozen, like every section of the daemon's config (they are
mounted into it in the wiring phase). Secrets follow the daemon's rule: the config names an
environment variable or a file, and :func:`resolve_mqtt_secrets` reads them from what the
caller passes in; nothing is read implicitly, and secrets never appear in a ``repr`` or a log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, model_validator

from stream_agent.alerts.errors import AlertsError
from stream_agent.alerts.rules import RuleSpec
from stream_agent.durations import parse_duration

_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
_NODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _duration(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


Seconds = Annotated[float, BeforeValidator(_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Section):
    """TLS to the broker. Without ``ca_file`` the system's trusted certificates are used."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    """Skip the check of the broker's host name (self-signed test brokers only)."""

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: cert_file and key_file go together")
        return self


class BackoffConfig(_Section):
    """Capped, jittered exponential backoff between reconnection attempts."""

    initial_s: Seconds = Field(default=0.5, gt=0, le=600)
    max_s: Seconds = Field(default=30.0, gt=0, le=3600)
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    jitter: float = Field(default=0.25, ge=0.0, le=1.0)


class MqttConfig(_Section):
    """The MQTT broker connection and the topics (see docs/mqtt.md)."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    client_id: str | None = None
    """Stable, unique per instance; None: ``stream-agent-<node_id>``."""
    prefix: str = "stream_agent"
    node_id: str | None = None
    """This daemon's id in discovery and unique ids; None: the prefix with '/' made '_'."""
    device_name: str = "stream-agent"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    stats_interval_s: Seconds = Field(default=60.0, ge=1.0, le=86_400)
    outbox_path: Path | None = None
    """None: the daemon puts it beside the memory's store (``mqtt-outbox.sqlite``)."""
    outbox_max_messages: int = Field(default=10_000, ge=1, le=10_000_000)
    command_token_env: str | None = None
    command_token_file: Path | None = None
    """When set, commands on PREFIX/rules/set must carry this token (``"token"`` field)."""
    backoff: BackoffConfig = BackoffConfig()

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        for name in ("prefix", "discovery_prefix"):
            if not _PREFIX.match(getattr(self, name)):
                raise ValueError(f"{name} must be topic words of letters, digits, '_' or '-'")
        if self.node_id is not None and not _NODE.match(self.node_id):
            raise ValueError("node_id must be 1-64 letters, digits, '_' or '-'")
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if self.command_token_env is not None and self.command_token_file is not None:
            raise ValueError("give command_token_env or command_token_file, not both")
        return self

    @property
    def effective_node_id(self) -> str:
        return self.node_id or self.prefix.replace("/", "_")

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"stream-agent-{self.effective_node_id}"


class AlertsConfig(_Section):
    """Alert rules and where their events go."""

    rules: list[RuleSpec] = []
    mqtt: MqttConfig | None = None
    """None: no MQTT (events still go to the history and to WebSocket subscribers)."""
    rules_path: Path | None = None
    """The run-time rule store; None: beside the memory's store (``alert-rules.json``)."""
    history_path: Path | None = None
    """The event history; None: beside the memory's store (``events.sqlite``)."""
    history_max_bytes: ByteSize = Field(default=ByteSize(64 * 1024 * 1024), ge=64 * 1024)
    history_retention_s: Seconds | None = None
    """None: the memory's retention horizon."""
    tick_s: Seconds = Field(default=0.25, gt=0, le=10)
    """How often the scheduler looks for due rules."""

    @model_validator(mode="after")
    def _unique(self) -> AlertsConfig:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return self


@dataclass(frozen=True, slots=True)
class MqttSecrets:
    password: str | None = field(default=None, repr=False)
    command_token: str | None = field(default=None, repr=False)


def _read_secret(
    what: str, env: str | None, file: Path | None, environ: Mapping[str, str]
) -> str | None:
    if env is not None:
        if env not in environ:
            raise AlertsError(f"{what}: environment variable {env} is not set")
        return environ[env]
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AlertsError(f"{what}: cannot read {file}: {exc.strerror}") from None
    return None


def resolve_mqtt_secrets(config: MqttConfig, environ: Mapping[str, str]) -> MqttSecrets:
    return MqttSecrets(
        password=_read_secret(
            "the MQTT password", config.password_env, config.password_file, environ
        ),
        command_token=_read_secret(
            "the MQTT command token", config.command_token_env, config.command_token_file, environ
        ),
    )
