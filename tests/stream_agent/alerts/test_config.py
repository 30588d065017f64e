"""The alerts config: unknown keys rejected, secrets named, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stream_agent.alerts.config import AlertsConfig, MqttConfig, resolve_mqtt_secrets
from stream_agent.alerts.errors import AlertsError


def test_defaults() -> None:
    c = MqttConfig()
    assert (c.prefix, c.discovery_prefix, c.port) == ("stream_agent", "homeassistant", 1883)
    assert c.effective_node_id == "stream_agent"
    assert c.effective_client_id == "stream-agent-stream_agent"
    assert MqttConfig(prefix="home/agent").effective_node_id == "home_agent"


@pytest.mark.parametrize(
    "data",
    [
        {"hostname": "x"},
        {"prefix": "a/#"},
        {"prefix": "/lead"},
        {"node_id": "bad id"},
        {"port": 0},
        {"password_env": "A", "password_file": "/x"},
        {"tls": {"cert_file": "/c"}},
        {"tls": {"verify": False}},
    ],
)
def test_bad_mqtt_config_is_refused(data: dict) -> None:
    with pytest.raises(ValidationError):
        MqttConfig.model_validate(data)


def test_alerts_config_with_rules() -> None:
    c = AlertsConfig.model_validate(
        {
            "rules": [{"name": "a", "condition": "Is a person there?", "cooldown_s": "2m"}],
            "mqtt": {"host": "broker", "stats_interval_s": "30s"},
            "history_max_bytes": "2MiB",
        }
    )
    assert c.history_max_bytes == 2 * 1024 * 1024
    assert c.rules[0].cooldown_s == 120 and c.mqtt is not None and c.mqtt.stats_interval_s == 30
    with pytest.raises(ValidationError, match="unique"):
        AlertsConfig.model_validate(
            {"rules": [{"name": "a", "condition": "abc"}, {"name": "a", "condition": "abd"}]}
        )
    with pytest.raises(ValidationError):
        AlertsConfig.model_validate({"rulez": []})


def test_secrets_are_read_from_what_is_passed_and_never_shown(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    c = MqttConfig(password_env="MQTT_PW", command_token_file=token)
    s = resolve_mqtt_secrets(c, {"MQTT_PW": "pw-456"})
    assert (s.password, s.command_token) == ("pw-456", "tok-123")
    assert "pw-456" not in repr(s) and "tok-123" not in repr(s)
    with pytest.raises(AlertsError, match="MQTT_PW"):
        resolve_mqtt_secrets(c, {})
