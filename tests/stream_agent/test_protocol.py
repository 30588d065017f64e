"""The protocol module: inbound parsing never raises, outbound messages round-trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_agent.protocol import (
    Ack,
    Answer,
    Ask,
    Auth,
    CameraInfo,
    Cancel,
    Delta,
    Error,
    Evidence,
    Hello,
    Invalid,
    ServerMessage,
    StatusQuery,
    StatusReply,
    TimeBound,
    Timings,
    UnknownMessageType,
    encode,
    format_wall_time,
    parse_client_message,
    parse_duration,
    parse_server_message,
    parse_wall_time,
)


def test_an_ask_with_every_field_parses() -> None:
    raw = json.dumps(
        {
            "type": "ask",
            "id": "q-1",
            "question": "Who came in?",
            "camera": "dock",
            "since": "10m",
            "until": "2025-05-01T12:00:00+02:00",
        }
    )
    message = parse_client_message(raw)
    assert message == Ask(
        id="q-1",
        question="Who came in?",
        camera="dock",
        since=TimeBound(ago_s=600.0),
        until=TimeBound(unix_s=datetime(2025, 5, 1, 10, tzinfo=UTC).timestamp()),
    )


def test_the_other_client_messages_parse() -> None:
    assert parse_client_message('{"type":"cancel","id":"q-1"}') == Cancel("q-1")
    assert parse_client_message('{"type":"status"}') == StatusQuery()
    assert parse_client_message('{"type":"status","id":"s"}') == StatusQuery("s")
    assert parse_client_message('{"type":"auth","token":"t"}') == Auth("t")


def test_client_records_serialise_to_what_the_parser_reads() -> None:
    ask = Ask("a", "q?", "dock", TimeBound(ago_s=90.0), TimeBound(unix_s=1714564800.0))
    assert parse_client_message(encode(ask)) == ask
    for message in (Cancel("a"), StatusQuery("s"), StatusQuery(), Auth("tok", "x")):
        assert parse_client_message(encode(message)) == message


@pytest.mark.parametrize(
    ("raw", "expected_id", "fragment"),
    [
        ("{not json", None, "not valid JSON"),
        ("[1, 2]", None, "must be a JSON object, not list"),
        ('"hello"', None, "must be a JSON object, not str"),
        ('{"id": "x"}', "x", "needs a 'type'"),
        ('{"type": 7}', None, "needs a 'type'"),
        ('{"type": "dance", "id": "x"}', "x", "unknown message type 'dance'"),
        ('{"type": "ask", "id": "x", "question": "q", "camra": "a"}', "x", "'camra'"),
        ('{"type": "ask", "question": "q"}', None, "needs an 'id'"),
        ('{"type": "ask", "id": 5, "question": "q"}', None, "'id' must be a string, not int"),
        ('{"type": "ask", "id": "", "question": "q"}', None, "1 to 128 characters"),
        ('{"type": "ask", "id": "x", "question": "  "}', "x", "non-empty string"),
        ('{"type": "ask", "id": "x", "question": ["q"]}', "x", "must be a string"),
        ('{"type": "ask", "id": "x", "question": "q", "since": "yesterday"}', "x", "'since'"),
        ('{"type": "ask", "id": "x", "question": "q", "since": 600}', "x", "must be a string"),
        ('{"type": "ask", "id": "x", "question": "q", "until": "2025-05-01T12:00"}', "x", "offset"),
        ('{"type": "cancel"}', None, "needs an 'id'"),
        ('{"type": "status", "id": null, "x": 1}', None, "unknown field"),
        ('{"type": "ask", "id": "x", "question": "' + "q" * 5000 + '"}', "x", "longer than"),
    ],
)
def test_malformed_messages_become_bad_request_tied_to_the_id(
    raw: str, expected_id: str | None, fragment: str
) -> None:
    result = parse_client_message(raw)
    assert isinstance(result, Invalid)
    assert result.code == "bad_request"
    assert result.id == expected_id
    assert fragment in result.message


def test_binary_frames_and_deep_nesting_are_refused_politely() -> None:
    binary = parse_client_message(b'{"type":"status"}')
    assert isinstance(binary, Invalid) and "binary" in binary.message
    deep = parse_client_message("[" * 100_000 + "]" * 100_000)
    assert isinstance(deep, Invalid) and deep.code == "bad_request"


def test_auth_without_token_is_unauthorized() -> None:
    result = parse_client_message('{"type":"auth"}')
    assert isinstance(result, Invalid) and result.code == "unauthorized"
    assert result.request_type == "auth"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["ask", "cancel", "status", "auth", "other"])},
    optional={
        "id": json_values,
        "question": json_values,
        "camera": json_values,
        "since": json_values | st.sampled_from(["10m", "1h30m", "now", "2025-01-01T00:00:00Z"]),
        "until": json_values,
        "token": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=50),
        json_values.map(json.dumps),
        message_like.map(json.dumps),
    )
)
def test_the_parser_never_raises(raw: str | bytes) -> None:
    result = parse_client_message(raw)
    assert isinstance(result, Ask | Cancel | StatusQuery | Auth | Invalid)
    if isinstance(result, Invalid):
        assert result.message and result.code in ("bad_request", "unauthorized")


def test_durations_and_times() -> None:
    assert parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2.5s") == 2.5
    assert parse_duration("90") == 90
    assert parse_duration("1d 2h") == 93600
    assert parse_duration("250ms") == 0.25
    for bad in ("", "m", "10 parsecs", "-5m", "1e3s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_wall_time(1714564800.25) == "2024-05-01T12:00:00.250Z"
    assert parse_wall_time("2024-05-01T12:00:00.250Z") == 1714564800.25
    assert TimeBound.parse("now").resolve(100.0) == 100.0
    assert TimeBound.parse("10s").resolve(100.0) == 90.0
    assert TimeBound.parse("2024-05-01T12:00:00Z").resolve(0.0) == 1714564800.0


def test_server_messages_round_trip() -> None:
    evidence = Evidence(
        camera="dock",
        start_s=3.0,
        end_s=4.0,
        start_time="2024-05-01T12:00:03.000Z",
        end_time="2024-05-01T12:00:04.000Z",
        score=0.75,
        frame_url="/cameras/dock/frame.jpg?at=1714564803.500",
    )
    camera = CameraInfo("dock", "online", "", "2024-05-01T12:00:04.000Z", 2, 5, 1000, 0)
    messages: list[ServerMessage] = [
        Hello(1, "stream-agent 0.1.0", "m", (camera,), False, 65536, 2),
        Ack("q", "dock", "2024-05-01T11:50:00.000Z", None),
        Delta("q", 0, "Hel"),
        Answer("q", "Hello", (evidence,), Timings(12.5, 30.0, 100.0, 4), "stop"),
        StatusReply("s", "m", True, "1 of 1 cameras online", (camera,), 0, 1),
        Error("unknown_camera", "no camera named 'x'", "q", "ask"),
    ]
    for message in messages:
        assert parse_server_message(encode(message)) == message


def test_answer_timings_carry_the_optional_figures_and_older_answers_still_parse() -> None:
    timings = Timings(412.5, 18.2, 2210.0, 34, 3.1, 180.4, 2848, 14, 0)
    wire = timings.to_wire()
    assert {k: wire[k] for k in ("queue_ms", "retrieval_ms", "context_tokens")} == {
        "queue_ms": 3.1,
        "retrieval_ms": 180.4,
        "context_tokens": 2848,
    }
    assert (wire["blocks_loaded"], wire["disk_reads"]) == (14, 0)
    assert Timings.from_wire(wire) == timings
    # an answer from a server without these fields: they are unknown, not zero
    old = '{"type":"answer","id":"q","text":"","evidence":[],"finish_reason":"stop",'
    old += '"timings":{"ttft_ms":1.0,"tokens_per_s":null,"total_ms":2.0,"tokens":1}}'
    parsed = parse_server_message(old)
    assert isinstance(parsed, Answer)
    assert parsed.timings == Timings(1.0, None, 2.0, 1)
    assert parsed.timings.retrieval_ms is None and parsed.timings.disk_reads is None


def test_unexpected_server_messages_raise_value_error() -> None:
    for raw in ("[]", '{"type":"delta"}', "not json", "{}"):
        with pytest.raises(ValueError):
            parse_server_message(raw)
    # a newer server's message type is recognisable, so that clients can skip it
    with pytest.raises(UnknownMessageType):
        parse_server_message('{"type":"alert","rule":"person"}')


_shares = st.one_of(st.none(), st.floats(0.0, 1.0))


@given(
    start=st.one_of(st.none(), st.floats(0.0, 4e9)),
    span=st.floats(0.0, 1e6),
    reuse=_shares,
    kept=_shares,
    lag=st.one_of(st.none(), st.floats(0.0, 1e5)),
)
def test_status_cameras_carry_span_compression_and_lag(
    start: float | None, span: float, reuse: float | None, kept: float | None, lag: float | None
) -> None:
    camera = CameraInfo(
        "dock",
        "online",
        memory_blocks=None if start is None else 3,
        memory_start_time=None if start is None else format_wall_time(start),
        memory_end_time=None if start is None else format_wall_time(start + span),
        cacher_reuse_share=reuse,
        pruner_kept_share=kept,
        lag_s=lag,
    )
    reply = StatusReply("s", "m", True, "", (camera,), 0, 0)
    assert parse_server_message(encode(reply)) == reply
    wire = json.loads(encode(reply))["cameras"][0]
    assert set(wire["memory"]) == {"blocks", "ram_bytes", "disk_bytes", "start_time", "end_time"}
    assert wire["compression"] == {"cacher_reuse_share": reuse, "pruner_kept_share": kept}
    assert wire["lag_s"] == lag
    if start is not None:
        memory = wire["memory"]
        assert parse_wall_time(memory["start_time"]) <= parse_wall_time(memory["end_time"])


def test_alert_messages_round_trip() -> None:
    from stream_agent.protocol import (
        EventPush,
        EventsQuery,
        EventsReply,
        RuleCommand,
        RuleResult,
        Subscribe,
        Subscribed,
        Unsubscribe,
        Unsubscribed,
    )

    client_messages = [
        RuleCommand("r", {"op": "add", "rule": {"name": "x", "condition": "Is it?"}}),
        Subscribe("s"),
        Subscribe("s", camera="dock", rule="x"),
        Unsubscribe("s"),
        EventsQuery("e"),
        EventsQuery("e", camera="dock", rule="x", since=TimeBound(ago_s=3600.0), limit=5),
        Ask("a", "Who?", event="1764850000.250-x-dock-3fa9c1"),
    ]
    for message in client_messages:
        assert parse_client_message(encode(message)) == message
    record = {"id": "1-x-dock-abcdef", "rule": "x", "camera": "dock", "active": True}
    server_messages: list[ServerMessage] = [
        RuleResult("r", {"op": "list", "ok": True, "rules": []}),
        Subscribed("s"),
        Unsubscribed("s"),
        EventPush("s", {"type": "start", "id": record["id"], "before": None, "after": record}),
        EventsReply("e", ({**record, "type": "start"},)),
        StatusReply(
            "s", "m", True, "ok", (), 0, 0, {"mqtt": {"state": "online", "reason": ""}, "rules": 1}
        ),
        Error("unknown_event", "no such event", "a", "ask"),
    ]
    for message in server_messages:
        assert parse_server_message(encode(message)) == message
    assert encode(RuleResult("r", {"ok": True, "op": "get"})).startswith('{"ok":true')
    assert "alerts" not in StatusReply("s", "m", True, "ok", (), 0, 0).to_wire()
