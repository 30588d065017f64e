"""The MQTT topic names, all under one configurable prefix (docs/mqtt.md has the table)."""

from __future__ import annotations

import re
from dataclasses import dataclass

RESERVED_CAMERA_NAMES = frozenset({"available", "events", "rules", "stats"})
"""Camera names that would collide with the daemon-wide topics directly under the prefix."""
_TOPIC_WORD = re.compile(r"^[^/#+\x00]+$")


def check_topic_word(word: str, what: str) -> str:
    if not _TOPIC_WORD.match(word):
        raise ValueError(f"{what} {word!r} cannot be part of an MQTT topic")
    return word


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = "stream_agent"
    discovery_prefix: str = "homeassistant"

    @property
    def available(self) -> str:
        return f"{self.prefix}/available"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"

    @property
    def command(self) -> str:
        return f"{self.prefix}/rules/set"

    @property
    def result(self) -> str:
        return f"{self.prefix}/rules/result"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def camera_state(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/state"

    def camera_snapshot(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/snapshot"

    def rule_state(self, camera: str, rule: str) -> str:
        return f"{self.prefix}/{camera}/{rule}"

    def rule_snapshot(self, camera: str, rule: str) -> str:
        return f"{self.prefix}/{camera}/{rule}/snapshot"

    def rule_event(self, camera: str, rule: str) -> str:
        return f"{self.prefix}/{camera}/{rule}/event"

    def discovery(self, node_id: str) -> str:
        return f"{self.discovery_prefix}/device/{node_id}/config"
