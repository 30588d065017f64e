"""Home Assistant device-based discovery payloads carry every field HA requires."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from stream_agent.alerts.discovery import DeviceInfo, device_config, platforms
from stream_agent.alerts.topics import Topics

TOPICS = Topics("stream_agent", "homeassistant")
DEVICE = DeviceInfo(node_id="stream_agent", sw_version="0.1.0")
# What each platform needs besides p and unique_id (HA MQTT integration docs).
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
    "image": {"image_topic", "content_type"},
}
ID = re.compile(r"^[A-Za-z0-9_-]+$")

names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,10}", fullmatch=True)


def check_payload(payload: dict, cameras: list[str], pairs: list[tuple[str, str]]) -> None:
    assert json.loads(json.dumps(payload)) == payload
    dev = payload["dev"]
    assert dev["ids"] == [DEVICE.node_id] and dev["name"]
    assert payload["o"]["name"] == "stream-agent"  # origin is mandatory
    assert payload["availability_topic"] == TOPICS.available
    assert payload["payload_available"] == "online"
    assert payload["payload_not_available"] == "offline"
    unique_ids = []
    for cid, comp in payload["cmps"].items():
        assert ID.match(cid)
        if len(comp) == 1:  # removal marker
            assert set(comp) == {"p"}
            continue
        assert comp["p"] in REQUIRED
        assert REQUIRED[comp["p"]] <= set(comp)
        assert comp["unique_id"] == cid
        unique_ids.append(comp["unique_id"])
        for key, value in comp.items():
            if key.endswith("_topic"):
                assert value.startswith("stream_agent/")
    assert len(unique_ids) == len(set(unique_ids))
    kinds = [c["p"] for c in payload["cmps"].values() if len(c) > 1]
    assert kinds.count("sensor") == kinds.count("image") == len(cameras)
    assert kinds.count("binary_sensor") == kinds.count("event") == len(pairs)


@given(
    st.lists(names, min_size=1, max_size=4, unique=True),
    st.lists(names, max_size=4, unique=True),
)
def test_every_component_has_what_home_assistant_requires(
    cameras: list[str], rules: list[str]
) -> None:
    pairs = [(r, c) for r in rules for c in cameras]
    check_payload(device_config(TOPICS, DEVICE, cameras, pairs), cameras, pairs)


def test_topics_match_the_published_ones() -> None:
    payload = device_config(TOPICS, DEVICE, ["door"], [("person", "door")])
    c = payload["cmps"]
    assert c["stream_agent_door_state"]["state_topic"] == "stream_agent/door/state"
    assert c["stream_agent_door_snapshot"]["image_topic"] == "stream_agent/door/snapshot"
    assert c["stream_agent_door_person"]["state_topic"] == "stream_agent/door/person"
    assert c["stream_agent_door_person"]["payload_on"] == "ON"
    assert c["stream_agent_door_person_event"]["state_topic"] == "stream_agent/door/person/event"
    assert c["stream_agent_door_person_event"]["event_types"] == ["start", "update", "end"]
    assert TOPICS.discovery("stream_agent") == "homeassistant/device/stream_agent/config"


def test_a_removed_rule_is_sent_as_platform_only() -> None:
    before = platforms(device_config(TOPICS, DEVICE, ["door"], [("person", "door")]))
    after = platforms(device_config(TOPICS, DEVICE, ["door"], []))
    removed = {k: v for k, v in before.items() if k not in after}
    assert removed == {
        "stream_agent_door_person": "binary_sensor",
        "stream_agent_door_person_event": "event",
    }
    payload = device_config(TOPICS, DEVICE, ["door"], [], removed=removed)
    assert payload["cmps"]["stream_agent_door_person"] == {"p": "binary_sensor"}
    check_payload(payload, ["door"], [])
