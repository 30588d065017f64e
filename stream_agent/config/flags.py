"""The config for ``stream-agent serve --source URL --model DIR`` with no file at all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stream_agent.config.loading import error_sentence
from stream_agent.config.sections import CAMERA_NAME, DaemonConfig
from stream_agent.errors import ConfigError


def parse_source_flag(value: str, index: int) -> dict[str, Any]:
    """``--source`` value -> camera fields: ``[NAME=]URL|PATH|/dev/videoN`` (name: cam0, ...)."""
    name = f"cam{index}"
    head, sep, tail = value.partition("=")
    if sep and CAMERA_NAME.match(head) and "://" not in head:
        name, value = head, tail
    if "://" in value:
        return {"name": name, "url": value}
    if value.startswith("/dev/"):
        return {"name": name, "device": value}
    return {"name": name, "path": value}


def from_flags(
    sources: Sequence[str],
    *,
    model: str | None = None,
    host: str | None = None,
    port: int | None = None,
    fps: float | None = None,
    token_env: str | None = None,
    token_file: Path | None = None,
    device: str | None = None,
    store_dir: Path | None = None,
    max_new_tokens: int | None = None,
    mqtt_host: str | None = None,
    mqtt_port: int | None = None,
) -> DaemonConfig:
    """The config for ``serve --source ... --model ...`` without a file; defaults elsewhere.

    ``model`` is a local folder when it exists or starts with ``.``, ``/`` or ``~``, else a hub
    id. Raises :class:`ConfigError` with the offending flag named.
    """
    if not sources:
        raise ConfigError("give at least one --source (a URL, a file or /dev/videoN)")
    cameras = []
    for i, value in enumerate(sources):
        cam = parse_source_flag(value, i)
        if fps is not None:
            cam["fps"] = fps
        cameras.append(cam)
    data: dict[str, Any] = {"cameras": cameras}
    server: dict[str, Any] = {}
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    if token_env is not None:
        server["token_env"] = token_env
    if token_file is not None:
        server["token_file"] = token_file
    if server:
        data["server"] = server
    model_section: dict[str, Any] = {}
    if model is not None:
        looks_local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
        model_section["path" if looks_local else "id"] = model
    if device is not None:
        model_section["device"] = device
    if max_new_tokens is not None:
        model_section["max_new_tokens"] = max_new_tokens
    if model_section:
        data["model"] = model_section
    if store_dir is not None:
        data["memory"] = {"store_dir": store_dir}
    mqtt: dict[str, Any] = {}
    if mqtt_host is not None:
        mqtt["host"] = mqtt_host
    if mqtt_port is not None:
        mqtt["port"] = mqtt_port
    if mqtt:
        data["mqtt"] = mqtt
    flag_of = {
        "cameras": "--source",
        "fps": "--fps",
        "host": "--host",
        "port": "--port",
        "token_env": "--token-env",
        "token_file": "--token-file",
        "model": "--model",
        "device": "--device",
        "store_dir": "--store-dir",
        "max_new_tokens": "--max-new-tokens",
    }
    try:
        return DaemonConfig.model_validate(data, context={"base_dir": None})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        flag = next((flag_of[p] for p in reversed(loc) if isinstance(p, str) and p in flag_of), "")
        if loc[:1] == ("mqtt",):
            flag = f"--mqtt-{loc[1]}" if len(loc) > 1 else "--mqtt-host"
        where = f"{flag}: " if flag else ""
        raise ConfigError(f"{where}{error_sentence(err, loc)}") from None
