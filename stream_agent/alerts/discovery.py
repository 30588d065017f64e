"""Pure builders of Home Assistant's device-based MQTT discovery payload (HA 2024.11+).

One retained message on ``<discovery_prefix>/device/<node_id>/config`` declares the daemon as a
device (``dev``), who published it (``o``: origin), the availability topic shared by every
entity, and its components (``cmps``), each with its platform (``p``) and a ``unique_id``:

* per camera: a ``sensor`` of its state and an ``image`` of its latest event snapshot;
* per rule on each camera it watches: a ``binary_sensor`` (ON while an event is open) and an
  ``event`` entity (fires ``start``/``update``/``end``).

A component that goes away (its rule removed) stays in the payload as ``{"p": platform}`` only,
which is how Home Assistant is told to delete that one entity; an empty retained payload on the
topic removes the whole device.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stream_agent.alerts.topics import Topics

EVENT_TYPES = ("start", "update", "end")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def component_id(*parts: str) -> str:
    """A component id made of ``parts`` (characters HA does not allow become ``_``)."""
    return "_".join(_UNSAFE.sub("_", p) for p in parts)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    node_id: str
    """The device's id in topics and unique ids (``[A-Za-z0-9_-]``)."""
    name: str = "stream-agent"
    sw_version: str = "0.1.0"
    origin_url: str | None = None


def camera_components(topics: Topics, node_id: str, camera: str) -> dict[str, dict[str, Any]]:
    state_id = component_id(node_id, camera, "state")
    image_id = component_id(node_id, camera, "snapshot")
    return {
        state_id: {
            "p": "sensor",
            "unique_id": state_id,
            "name": f"{camera} state",
            "state_topic": topics.camera_state(camera),
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": topics.camera_state(camera),
            "device_class": "enum",
            "options": ["connecting", "online", "stalled", "offline", "ended"],
            "icon": "mdi:cctv",
        },
        image_id: {
            "p": "image",
            "unique_id": image_id,
            "name": f"{camera} snapshot",
            "image_topic": topics.camera_snapshot(camera),
            "content_type": "image/jpeg",
        },
    }


def rule_components(
    topics: Topics, node_id: str, camera: str, rule: str
) -> dict[str, dict[str, Any]]:
    sensor_id = component_id(node_id, camera, rule)
    event_id = component_id(node_id, camera, rule, "event")
    return {
        sensor_id: {
            "p": "binary_sensor",
            "unique_id": sensor_id,
            "name": f"{camera} {rule}",
            "state_topic": topics.rule_state(camera, rule),
            "payload_on": "ON",
            "payload_off": "OFF",
            "qos": 1,
        },
        event_id: {
            "p": "event",
            "unique_id": event_id,
            "name": f"{camera} {rule} event",
            "state_topic": topics.rule_event(camera, rule),
            "event_types": list(EVENT_TYPES),
            "qos": 1,
        },
    }


def device_config(
    topics: Topics,
    device: DeviceInfo,
    cameras: Sequence[str],
    rule_cameras: Iterable[tuple[str, str]],
    removed: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The discovery payload. ``rule_cameras``: (rule, camera) pairs; ``removed``: component id
    -> platform of components to delete (sent as ``{"p": platform}``)."""
    components: dict[str, dict[str, Any]] = {}
    for cid, platform in (removed or {}).items():
        components[cid] = {"p": platform}
    for camera in cameras:
        components.update(camera_components(topics, device.node_id, camera))
    for rule, camera in rule_cameras:
        components.update(rule_components(topics, device.node_id, camera, rule))
    origin: dict[str, Any] = {"name": "stream-agent", "sw": device.sw_version}
    if device.origin_url is not None:
        origin["url"] = device.origin_url
    return {
        "dev": {
            "ids": [device.node_id],
            "name": device.name,
            "mf": "stream-agent",
            "mdl": "stream-agent daemon",
            "sw": device.sw_version,
        },
        "o": origin,
        "availability_topic": topics.available,
        "payload_available": "online",
        "payload_not_available": "offline",
        "cmps": components,
    }


def platforms(payload: Mapping[str, Any]) -> dict[str, str]:
    """Component id -> platform of a payload (to compute what a later payload removes)."""
    return {cid: str(c["p"]) for cid, c in payload.get("cmps", {}).items() if len(c) > 1}
