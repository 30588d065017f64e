"""Secrets the config names (the bearer token, camera passwords), read once at start-up.

They never sit in the config itself and are never read implicitly: the config names an
environment variable (``token_env``, ``password_env``) or a file (``token_file``,
``password_file``), and :func:`resolve_secrets` reads them from an environment mapping the caller
passes in and from those files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from stream_agent.alerts.config import MqttSecrets, resolve_mqtt_secrets
from stream_agent.alerts.errors import AlertsError
from stream_agent.config.sections import CameraConfig, DaemonConfig
from stream_agent.errors import ConfigError


@dataclass(frozen=True)
class Secrets:
    """Secrets read at start-up; ``repr`` never shows them."""

    token: str | None = field(default=None, repr=False)
    camera_passwords: Mapping[str, str] = field(default_factory=dict, repr=False)
    mqtt: MqttSecrets = field(default_factory=MqttSecrets, repr=False)
    """The MQTT password and command token (the ``mqtt`` section's ``*_env``/``*_file``)."""

    def camera_url(self, camera: CameraConfig) -> str:
        """The camera's URL with its username and password inserted (for ingest only)."""
        if camera.url is None:
            return camera.location
        password = self.camera_passwords.get(camera.name)
        if camera.username is None and password is None:
            return camera.url
        parts = urlsplit(camera.url)
        host = parts.netloc.rpartition("@")[2]
        user = quote(camera.username or "", safe="")
        auth = user if password is None else f"{user}:{quote(password, safe='')}"
        return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


def _read_secret(what: str, env: str | None, file: Path | None, environ: Mapping[str, str]) -> str:
    if env is not None:
        value = environ.get(env)
        if not value:
            raise ConfigError(f"{what} comes from the environment variable {env}, which is not set")
        return value
    assert file is not None
    try:
        value = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{what} comes from {file}, which cannot be read: {exc.strerror}"
        ) from exc
    if not value:
        raise ConfigError(f"{what} comes from {file}, which is empty")
    return value


def resolve_secrets(config: DaemonConfig, environ: Mapping[str, str]) -> Secrets:
    """Read the secrets the config names, from ``environ`` and the named files."""
    s = config.server
    token = None
    if s.token_env is not None or s.token_file is not None:
        token = _read_secret("the server token", s.token_env, s.token_file, environ)
    passwords = {
        cam.name: _read_secret(
            f"the password of camera {cam.name!r}", cam.password_env, cam.password_file, environ
        )
        for cam in config.cameras
        if cam.password_env is not None or cam.password_file is not None
    }
    mqtt = MqttSecrets()
    if config.mqtt is not None:
        try:
            mqtt = resolve_mqtt_secrets(config.mqtt, environ)
        except AlertsError as exc:
            raise ConfigError(f"mqtt: {exc}") from None
    return Secrets(token=token, camera_passwords=passwords, mqtt=mqtt)
