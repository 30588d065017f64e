"""The WebSocket JSON protocol between the daemon and its clients (version 1).

Every message is one JSON object in a WebSocket text frame with a ``type``. ``docs/protocol.md``
is the reference; this module is its executable form, shared by the server and the clients, and
depends on the standard library only so that a client never pulls in torch.

Inbound (client to server) messages are parsed by :func:`parse_client_message`, which never
raises: it returns either a typed, frozen record or an :class:`Invalid` that says which error to
send back. Outbound (server to client) messages are frozen records with ``to_wire()``;
:func:`parse_server_message` turns them back into records on the client side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias, cast

from stream_agent.durations import looks_like_duration, parse_duration

PROTOCOL_VERSION: Final = 1
"""Bumped on any incompatible change; clients compare it with the ``hello`` they receive."""

MAX_ID_CHARS: Final = 128
MAX_QUESTION_CHARS: Final = 4000
MAX_TOKEN_CHARS: Final = 4096

ErrorCode: TypeAlias = Literal[
    "bad_request", "unknown_camera", "unknown_event", "busy", "unauthorized", "internal"
]
ERROR_CODES: Final[frozenset[str]] = frozenset(
    {"bad_request", "unknown_camera", "unknown_event", "busy", "unauthorized", "internal"}
)
FinishReason: TypeAlias = Literal["stop", "length", "cancelled"]
FINISH_REASONS: Final[frozenset[str]] = frozenset({"stop", "length", "cancelled"})

CLIENT_TYPES: Final = (
    "ask",
    "cancel",
    "status",
    "auth",
    "rule",
    "subscribe",
    "unsubscribe",
    "events",
)
MAX_EVENTS_LIMIT: Final = 1000
DEFAULT_EVENTS_LIMIT: Final = 100
MAX_NAME_CHARS: Final = 64
MAX_EVENT_ID_CHARS: Final = 200


# ---------------------------------------------------------------------------------------------
# Durations and time bounds
# ---------------------------------------------------------------------------------------------


def format_wall_time(unix_s: float) -> str:
    """An ISO 8601 UTC timestamp with milliseconds, e.g. ``2025-05-01T12:00:03.250Z``."""
    stamp = datetime.fromtimestamp(unix_s, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def parse_wall_time(text: str) -> float:
    """Parse an ISO 8601 time with a UTC offset (or ``Z``) into Unix seconds."""
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time; write e.g. '2025-05-01T12:00:00Z'"
        ) from None
    if stamp.tzinfo is None:
        raise ValueError(
            f"{text!r} has no UTC offset; add one (e.g. 'Z' or '+02:00') so it means one instant"
        )
    try:
        unix_s = stamp.timestamp()
        format_wall_time(unix_s)  # must also be writable back (the ack names it)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{text!r} lies outside the years 1 to 9999 (UTC)") from None
    return unix_s


@dataclass(frozen=True, slots=True)
class TimeBound:
    """One end of a time range: an absolute instant or a span before the moment of asking."""

    unix_s: float | None = None
    ago_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> TimeBound:
        """``"10m"`` (ten minutes before now), ``"now"`` or an ISO 8601 time with offset."""
        stripped = text.strip()
        if stripped.lower() == "now":
            return cls(ago_s=0.0)
        if looks_like_duration(stripped):
            return cls(ago_s=parse_duration(stripped))
        if len(stripped) >= 10 and stripped[4:5] == "-":
            return cls(unix_s=parse_wall_time(stripped))
        raise ValueError(
            f"{text!r} is neither a duration like '10m' nor an ISO 8601 time like "
            "'2025-05-01T12:00:00Z'"
        )

    def resolve(self, now_unix_s: float) -> float:
        """The instant this bound names, in Unix seconds, for a question asked at ``now``."""
        if self.unix_s is not None:
            return self.unix_s
        return now_unix_s - (self.ago_s or 0.0)

    def to_wire(self) -> str:
        if self.unix_s is not None:
            return format_wall_time(self.unix_s)
        return f"{self.ago_s:g}s"


# ---------------------------------------------------------------------------------------------
# Client -> server
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ask:
    """A question. ``id`` is the client's own, unique among its questions in flight."""

    id: str
    question: str
    camera: str | None = None
    since: TimeBound | None = None
    until: TimeBound | None = None
    event: str | None = None
    """An alert event's id: the camera and time range default to the event's."""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "ask", "id": self.id, "question": self.question}
        if self.camera is not None:
            out["camera"] = self.camera
        if self.since is not None:
            out["since"] = self.since.to_wire()
        if self.until is not None:
            out["until"] = self.until.to_wire()
        if self.event is not None:
            out["event"] = self.event
        return out


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the answer to the question with this id."""

    id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "cancel", "id": self.id}


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """Ask for the cameras' states and memory sizes."""

    id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"type": "status"} if self.id is None else {"type": "status", "id": self.id}


@dataclass(frozen=True, slots=True)
class Auth:
    """In-band authentication (for browsers, which cannot set an Authorization header)."""

    token: str = field(repr=False)
    id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "auth", "token": self.token}
        if self.id is not None:
            out["id"] = self.id
        return out


@dataclass(frozen=True, slots=True)
class RuleCommand:
    """An alert rule command (``command``: the object of the MQTT ``PREFIX/rules/set`` topic,
    validated by the alerts' command handler, not here)."""

    id: str
    command: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"type": "rule", "id": self.id, "command": dict(self.command)}


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Push alert events (optionally of one camera and/or rule) under subscription ``id``."""

    id: str
    camera: str | None = None
    rule: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "subscribe", "id": self.id}
        if self.camera is not None:
            out["camera"] = self.camera
        if self.rule is not None:
            out["rule"] = self.rule
        return out


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "unsubscribe", "id": self.id}


@dataclass(frozen=True, slots=True)
class EventsQuery:
    """List stored alert events, oldest first (at most ``limit``: the newest that match)."""

    id: str
    camera: str | None = None
    rule: str | None = None
    since: TimeBound | None = None
    limit: int = DEFAULT_EVENTS_LIMIT

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "events", "id": self.id, "limit": self.limit}
        if self.camera is not None:
            out["camera"] = self.camera
        if self.rule is not None:
            out["rule"] = self.rule
        if self.since is not None:
            out["since"] = self.since.to_wire()
        return out


ClientMessage: TypeAlias = (
    Ask | Cancel | StatusQuery | Auth | RuleCommand | Subscribe | Unsubscribe | EventsQuery
)


@dataclass(frozen=True, slots=True)
class Invalid:
    """An inbound message that could not be accepted, and the error to answer it with."""

    code: ErrorCode
    message: str
    id: str | None = None
    request_type: str | None = None


class _Reject(Exception):
    def __init__(self, message: str, code: ErrorCode = "bad_request") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


_ALLOWED_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "ask": frozenset({"type", "id", "question", "camera", "since", "until", "event"}),
    "cancel": frozenset({"type", "id"}),
    "status": frozenset({"type", "id"}),
    "auth": frozenset({"type", "id", "token"}),
    "rule": frozenset({"type", "id", "command"}),
    "subscribe": frozenset({"type", "id", "camera", "rule"}),
    "unsubscribe": frozenset({"type", "id"}),
    "events": frozenset({"type", "id", "camera", "rule", "since", "limit"}),
}


def _check_id(value: object, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise _Reject("the message needs an 'id': a string naming this request")
        return None
    if not isinstance(value, str):
        raise _Reject(f"'id' must be a string, not {type(value).__name__}")
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise _Reject(f"'id' must be 1 to {MAX_ID_CHARS} characters long")
    if not value.isprintable():
        raise _Reject("'id' must not contain control characters")
    return value


def _optional_str(obj: Mapping[str, object], key: str, max_chars: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Reject(f"'{key}' must be a string, not {type(value).__name__}")
    if len(value) > max_chars:
        raise _Reject(f"'{key}' is longer than {max_chars} characters")
    _check_unicode(key, value)
    return value


def _check_unicode(key: str, value: str) -> None:
    """JSON can carry a lone UTF-16 surrogate (``"\\ud800"``), which is no character: no
    tokenizer takes it and no UTF-8 text can hold it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Reject(
            f"'{key}' is not valid Unicode text (it holds a lone surrogate such as \\ud800)"
        ) from None


def _time_bound(obj: Mapping[str, object], key: str) -> TimeBound | None:
    text = _optional_str(obj, key, 64)
    if text is None:
        return None
    try:
        return TimeBound.parse(text)
    except ValueError as exc:
        raise _Reject(f"'{key}': {exc}") from None


def _decode(raw: str | bytes) -> dict[str, object]:
    if isinstance(raw, bytes | bytearray | memoryview):
        raise _Reject("binary messages are not part of the protocol; send JSON as text")
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise _Reject("the message is nested too deeply to be a protocol message") from None
    except ValueError as exc:
        raise _Reject(f"the message is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _Reject(f"a message must be a JSON object, not {type(obj).__name__}")
    return cast(dict[str, object], obj)


def parse_client_message(raw: str | bytes) -> ClientMessage | Invalid:
    """Parse and validate one inbound message; never raises."""
    msg_id: str | None = None
    kind: str | None = None
    try:
        obj = _decode(raw)
        # Take the id first so that every later error can be tied to it.
        raw_id = obj.get("id")
        if isinstance(raw_id, str) and 1 <= len(raw_id) <= MAX_ID_CHARS and raw_id.isprintable():
            msg_id = raw_id
        raw_type = obj.get("type")
        if not isinstance(raw_type, str):
            raise _Reject(f"the message needs a 'type', one of: {', '.join(CLIENT_TYPES)}")
        if raw_type not in _ALLOWED_FIELDS:
            shown = raw_type if len(raw_type) <= 40 else raw_type[:40] + "..."
            raise _Reject(f"unknown message type {shown!r}; known types: {', '.join(CLIENT_TYPES)}")
        kind = raw_type
        extra = sorted(set(obj) - _ALLOWED_FIELDS[kind])
        if extra:
            shown_extra = ", ".join(repr(k[:40]) for k in extra[:5])
            allowed = ", ".join(sorted(_ALLOWED_FIELDS[kind] - {"type"}))
            raise _Reject(f"unknown field(s) {shown_extra} in '{kind}'; allowed: {allowed}")
        return _build(kind, obj)
    except _Reject as exc:
        return Invalid(code=exc.code, message=exc.message, id=msg_id, request_type=kind)
    except Exception as exc:  # the parser must never raise; report rather than crash
        return Invalid(
            code="bad_request",
            message=f"the message could not be read ({type(exc).__name__})",
            id=msg_id,
            request_type=kind,
        )


def _build(kind: str, obj: Mapping[str, object]) -> ClientMessage:
    if kind == "ask":
        msg_id = _check_id(obj.get("id"), required=True)
        assert msg_id is not None
        question = _optional_str(obj, "question", MAX_QUESTION_CHARS)
        if question is None or not question.strip():
            raise _Reject("'question' must be a non-empty string")
        camera = _optional_str(obj, "camera", 64)
        since = _time_bound(obj, "since")
        until = _time_bound(obj, "until")
        event = _optional_str(obj, "event", MAX_EVENT_ID_CHARS)
        if event is not None and not event:
            raise _Reject("'event' must be an event id, not empty")
        return Ask(
            id=msg_id, question=question, camera=camera, since=since, until=until, event=event
        )
    if kind in ("rule", "subscribe", "unsubscribe", "events"):
        return _build_alerts(kind, obj)
    if kind == "cancel":
        msg_id = _check_id(obj.get("id"), required=True)
        assert msg_id is not None
        return Cancel(id=msg_id)
    if kind == "status":
        return StatusQuery(id=_check_id(obj.get("id"), required=False))
    # auth
    token = _optional_str(obj, "token", MAX_TOKEN_CHARS)
    if token is None:
        raise _Reject("'auth' needs a 'token' string", code="unauthorized")
    return Auth(token=token, id=_check_id(obj.get("id"), required=False))


def _name_filter(obj: Mapping[str, object], key: str) -> str | None:
    value = _optional_str(obj, key, MAX_NAME_CHARS)
    if value is not None and not value:
        raise _Reject(f"'{key}' must not be empty; leave it out to mean every {key}")
    return value


def _build_alerts(kind: str, obj: Mapping[str, object]) -> ClientMessage:
    msg_id = _check_id(obj.get("id"), required=True)
    assert msg_id is not None
    if kind == "rule":
        command = obj.get("command")
        if not isinstance(command, dict):
            raise _Reject(
                "'rule' needs a 'command': an object with an 'op' (add, update, pause, resume, "
                "remove, get, list), as on the MQTT topic PREFIX/rules/set"
            )
        return RuleCommand(id=msg_id, command=cast(dict[str, Any], command))
    if kind == "unsubscribe":
        return Unsubscribe(id=msg_id)
    camera = _name_filter(obj, "camera")
    rule = _name_filter(obj, "rule")
    if kind == "subscribe":
        return Subscribe(id=msg_id, camera=camera, rule=rule)
    limit_value = obj.get("limit", DEFAULT_EVENTS_LIMIT)
    if isinstance(limit_value, bool) or not isinstance(limit_value, int):
        raise _Reject(f"'limit' must be a whole number from 1 to {MAX_EVENTS_LIMIT}")
    if not 1 <= limit_value <= MAX_EVENTS_LIMIT:
        raise _Reject(f"'limit' must be from 1 to {MAX_EVENTS_LIMIT}, not {limit_value}")
    since = _time_bound(obj, "since")
    return EventsQuery(id=msg_id, camera=camera, rule=rule, since=since, limit=limit_value)


# ---------------------------------------------------------------------------------------------
# Server -> client
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CameraInfo:
    """A camera as clients see it: its name, state and (in ``status``) memory size, the span of
    time the memory covers, the compression in effect and how far behind live the engine is."""

    name: str
    state: str
    reason: str = ""
    last_frame_time: str | None = None
    frames_dropped: int = 0
    memory_blocks: int | None = None
    memory_ram_bytes: int | None = None
    memory_disk_bytes: int | None = None
    memory_start_time: str | None = None
    memory_end_time: str | None = None
    cacher_reuse_share: float | None = None
    pruner_kept_share: float | None = None
    lag_s: float | None = None
    placement: tuple[str, str] | None = None
    """(engine, node) owning the camera, on a Ray placement only (docs/placement.md)."""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "last_frame_time": self.last_frame_time,
            "frames_dropped": self.frames_dropped,
            "memory": {
                "blocks": self.memory_blocks,
                "ram_bytes": self.memory_ram_bytes,
                "disk_bytes": self.memory_disk_bytes,
                "start_time": self.memory_start_time,
                "end_time": self.memory_end_time,
            },
            "compression": {
                "cacher_reuse_share": self.cacher_reuse_share,
                "pruner_kept_share": self.pruner_kept_share,
            },
            "lag_s": self.lag_s,
        }
        if self.placement is not None:
            wire["placement"] = {"engine": self.placement[0], "node": self.placement[1]}
        return wire

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> CameraInfo:
        memory = obj.get("memory") or {}
        placed = obj.get("placement")
        compression = obj.get("compression") or {}
        return cls(
            name=str(obj["name"]),
            state=str(obj["state"]),
            reason=str(obj.get("reason", "")),
            last_frame_time=obj.get("last_frame_time"),
            frames_dropped=int(obj.get("frames_dropped", 0)),
            memory_blocks=memory.get("blocks"),
            memory_ram_bytes=memory.get("ram_bytes"),
            memory_disk_bytes=memory.get("disk_bytes"),
            memory_start_time=memory.get("start_time"),
            memory_end_time=memory.get("end_time"),
            cacher_reuse_share=compression.get("cacher_reuse_share"),
            pruner_kept_share=compression.get("pruner_kept_share"),
            lag_s=obj.get("lag_s"),
            placement=None if not placed else (str(placed["engine"]), str(placed["node"])),
        )


@dataclass(frozen=True, slots=True)
class Hello:
    """Sent on connect (and again after a successful ``auth``)."""

    protocol: int
    server: str
    model: str | None
    cameras: tuple[CameraInfo, ...]
    auth_required: bool
    max_message_bytes: int
    max_questions_in_flight: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "protocol": self.protocol,
            "server": self.server,
            "model": self.model,
            "cameras": [c.to_wire() for c in self.cameras],
            "auth_required": self.auth_required,
            "limits": {
                "max_message_bytes": self.max_message_bytes,
                "max_questions_in_flight": self.max_questions_in_flight,
            },
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Hello:
        limits = obj.get("limits") or {}
        return cls(
            protocol=int(obj["protocol"]),
            server=str(obj.get("server", "")),
            model=obj.get("model"),
            cameras=tuple(CameraInfo.from_wire(c) for c in obj.get("cameras", [])),
            auth_required=bool(obj.get("auth_required", False)),
            max_message_bytes=int(limits.get("max_message_bytes", 0)),
            max_questions_in_flight=int(limits.get("max_questions_in_flight", 0)),
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """The question was accepted; ``since``/``until`` are the resolved range (ISO) or None."""

    id: str
    camera: str | None
    since: str | None
    until: str | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "ack",
            "id": self.id,
            "camera": self.camera,
            "since": self.since,
            "until": self.until,
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Ack:
        return cls(
            id=str(obj["id"]),
            camera=obj.get("camera"),
            since=obj.get("since"),
            until=obj.get("until"),
        )


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the answer's text; ``seq`` counts from 0 within one answer."""

    id: str
    seq: int
    text: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "delta", "id": self.id, "seq": self.seq, "text": self.text}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Delta:
        return cls(id=str(obj["id"]), seq=int(obj["seq"]), text=str(obj["text"]))


@dataclass(frozen=True, slots=True)
class Evidence:
    """A moment of video an answer was built from.

    ``start_s``/``end_s`` are stream seconds (the camera's presentation time), ``start_time`` and
    ``end_time`` the same instants as ISO wall time; ``frame_url`` is the HTTP path of the kept
    frame nearest the moment (on the same server), or None.
    """

    camera: str
    start_s: float
    end_s: float
    start_time: str
    end_time: str
    score: float
    frame_url: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "score": self.score,
            "frame_url": self.frame_url,
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Evidence:
        return cls(
            camera=str(obj["camera"]),
            start_s=float(obj["start_s"]),
            end_s=float(obj["end_s"]),
            start_time=str(obj["start_time"]),
            end_time=str(obj["end_time"]),
            score=float(obj["score"]),
            frame_url=obj.get("frame_url"),
        )


@dataclass(frozen=True, slots=True)
class Timings:
    """``ttft_ms``: from receipt of the question to its first token (None when no token).

    ``tokens_per_s``: decoding rate after the first token (None with fewer than two tokens).
    The optional figures (None where the server does not know them): ``queue_ms`` from receipt
    until the model began the answer; ``retrieval_ms`` the memory's retrieval pass (choosing
    and loading blocks, reading the question); ``context_tokens`` the most cached tokens a
    layer attended to before the question; ``blocks_loaded`` the distinct memory blocks the
    context was built from; ``disk_reads`` block layers read from disk rather than RAM.
    """

    ttft_ms: float | None
    tokens_per_s: float | None
    total_ms: float
    tokens: int
    queue_ms: float | None = None
    retrieval_ms: float | None = None
    context_tokens: int | None = None
    blocks_loaded: int | None = None
    disk_reads: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "ttft_ms": _round(self.ttft_ms),
            "tokens_per_s": _round(self.tokens_per_s),
            "total_ms": _round(self.total_ms),
            "tokens": self.tokens,
            "queue_ms": _round(self.queue_ms),
            "retrieval_ms": _round(self.retrieval_ms),
            "context_tokens": self.context_tokens,
            "blocks_loaded": self.blocks_loaded,
            "disk_reads": self.disk_reads,
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Timings:
        return cls(
            ttft_ms=obj.get("ttft_ms"),
            tokens_per_s=obj.get("tokens_per_s"),
            total_ms=float(obj.get("total_ms", 0.0)),
            tokens=int(obj.get("tokens", 0)),
            queue_ms=obj.get("queue_ms"),
            retrieval_ms=obj.get("retrieval_ms"),
            context_tokens=_count(obj.get("context_tokens")),
            blocks_loaded=_count(obj.get("blocks_loaded")),
            disk_reads=_count(obj.get("disk_reads")),
        )


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 3)


@dataclass(frozen=True, slots=True)
class Answer:
    """The final message of an answered (or cancelled) question: the whole text and evidence."""

    id: str
    text: str
    evidence: tuple[Evidence, ...]
    timings: Timings
    finish_reason: FinishReason
    notes: tuple[str, ...] = ()
    """Where the answer could not use what was asked for: ``no_moments`` (nothing was kept in
    the time range), or a sentence (fewer moments fitted beside a long question). Sent only
    when there are some."""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": "answer",
            "id": self.id,
            "text": self.text,
            "evidence": [e.to_wire() for e in self.evidence],
            "timings": self.timings.to_wire(),
            "finish_reason": self.finish_reason,
        }
        if self.notes:
            wire["notes"] = list(self.notes)
        return wire

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Answer:
        reason = str(obj.get("finish_reason", "stop"))
        if reason not in FINISH_REASONS:
            raise ValueError(f"unknown finish_reason {reason!r}")
        return cls(
            id=str(obj["id"]),
            text=str(obj["text"]),
            evidence=tuple(Evidence.from_wire(e) for e in obj.get("evidence", [])),
            timings=Timings.from_wire(obj.get("timings") or {}),
            finish_reason=cast(FinishReason, reason),
            notes=tuple(str(n) for n in obj.get("notes") or ()),
        )


@dataclass(frozen=True, slots=True)
class StatusReply:
    """Reply to ``status``: cameras with states and memory sizes, and the engine's queues."""

    id: str | None
    model: str | None
    ready: bool
    reason: str
    cameras: tuple[CameraInfo, ...]
    queued_frames: int
    queued_questions: int
    alerts: Mapping[str, Any] | None = None
    """``{"mqtt": {"state", "reason"}, "rules", "open_events"}`` when the alerts run."""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "status",
            "id": self.id,
            "model": self.model,
            "ready": self.ready,
            "reason": self.reason,
            "cameras": [c.to_wire() for c in self.cameras],
            "engine": {
                "queued_frames": self.queued_frames,
                "queued_questions": self.queued_questions,
            },
        }
        if self.alerts is not None:
            out["alerts"] = dict(self.alerts)
        return out

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> StatusReply:
        engine = obj.get("engine") or {}
        return cls(
            id=obj.get("id"),
            model=obj.get("model"),
            ready=bool(obj.get("ready", False)),
            reason=str(obj.get("reason", "")),
            cameras=tuple(CameraInfo.from_wire(c) for c in obj.get("cameras", [])),
            queued_frames=int(engine.get("queued_frames", 0)),
            queued_questions=int(engine.get("queued_questions", 0)),
            alerts=obj.get("alerts"),
        )


@dataclass(frozen=True, slots=True)
class Error:
    """An error, tied to the request id (and the type of message) when known."""

    code: ErrorCode
    message: str
    id: str | None = None
    request_type: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "error",
            "id": self.id,
            "code": self.code,
            "message": self.message,
            "request_type": self.request_type,
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Error:
        code = str(obj.get("code", "internal"))
        return cls(
            code=cast(ErrorCode, code if code in ERROR_CODES else "internal"),
            message=str(obj.get("message", "")),
            id=obj.get("id"),
            request_type=obj.get("request_type"),
        )


@dataclass(frozen=True, slots=True)
class RuleResult:
    """The reply to ``rule``: the alerts' command reply (``ok``, ``op``, ``rule``/``rules`` or
    ``error`` {``code``, ``message``, ``fields``}) with this ``id``."""

    id: str | None
    reply: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {**self.reply, "type": "rule_result", "id": self.id}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> RuleResult:
        reply = {k: v for k, v in obj.items() if k not in ("type", "id")}
        return cls(id=obj.get("id"), reply=reply)


@dataclass(frozen=True, slots=True)
class Subscribed:
    id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "subscribed", "id": self.id}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Subscribed:
        return cls(id=str(obj["id"]))


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    id: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": "unsubscribed", "id": self.id}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Unsubscribed:
        return cls(id=str(obj["id"]))


@dataclass(frozen=True, slots=True)
class EventPush:
    """One lifecycle step of an alert event for subscription ``id``: ``event`` is the JSON
    published on MQTT ``PREFIX/events`` (``type``, ``before``, ``after``)."""

    id: str
    event: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"type": "event", "id": self.id, "event": dict(self.event)}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> EventPush:
        return cls(id=str(obj["id"]), event=dict(obj["event"]))


@dataclass(frozen=True, slots=True)
class RuleChangedPush:
    """A rule was added, changed, paused, resumed or removed, by anyone (this connection,
    another, the MQTT command topic): pushed to subscription ``id`` when the rule matches its
    filters. ``rule`` is the rule as ``rule_result`` shows it (after the change; for ``remove``,
    as it was)."""

    id: str
    op: str
    rule: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"type": "rule_changed", "id": self.id, "op": self.op, "rule": dict(self.rule)}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> RuleChangedPush:
        return cls(id=str(obj["id"]), op=str(obj["op"]), rule=dict(obj["rule"]))


@dataclass(frozen=True, slots=True)
class EventsReply:
    """The reply to ``events``: history records, oldest first."""

    id: str
    events: tuple[Mapping[str, Any], ...]

    def to_wire(self) -> dict[str, Any]:
        return {"type": "events", "id": self.id, "events": [dict(e) for e in self.events]}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> EventsReply:
        return cls(id=str(obj["id"]), events=tuple(dict(e) for e in obj.get("events", [])))


ServerMessage: TypeAlias = (
    Hello
    | Ack
    | Delta
    | Answer
    | StatusReply
    | Error
    | RuleResult
    | Subscribed
    | Unsubscribed
    | EventPush
    | RuleChangedPush
    | EventsReply
)

_SERVER_TYPES: Final[Mapping[str, Any]] = {
    "hello": Hello,
    "ack": Ack,
    "delta": Delta,
    "answer": Answer,
    "status": StatusReply,
    "error": Error,
    "rule_result": RuleResult,
    "subscribed": Subscribed,
    "unsubscribed": Unsubscribed,
    "event": EventPush,
    "rule_changed": RuleChangedPush,
    "events": EventsReply,
}


def encode(message: ServerMessage | ClientMessage) -> str:
    """The JSON text of a message (compact, UTF-8 characters kept; anything that UTF-8 cannot
    carry, a lone surrogate, is written as a JSON escape so that the message can be sent)."""
    wire = message.to_wire()
    text = json.dumps(wire, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(wire, ensure_ascii=True, separators=(",", ":"))
    return text


class UnknownMessageType(ValueError):
    """A server message of a type this client does not know (a newer server): skip it."""


def parse_server_message(raw: str | bytes) -> ServerMessage:
    """Parse a server message on the client side; raises ``ValueError`` on anything unexpected
    (:class:`UnknownMessageType`, a subclass, for a well-formed message of an unknown type)."""
    if not isinstance(raw, str):
        raise ValueError("the server sent a binary message, which protocol 1 never does")
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("the server sent a message that is not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ValueError("the server sent a message without a 'type'")
    record = _SERVER_TYPES.get(kind)
    if record is None:
        raise UnknownMessageType(f"the server sent an unknown message type {kind!r}")
    try:
        return cast(ServerMessage, record.from_wire(obj))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the server's {kind!r} message is incomplete ({exc})") from None


def camera_names(cameras: Sequence[CameraInfo]) -> str:
    """``"a, b, c"`` or ``"(none)"``: for error sentences."""
    return ", ".join(c.name for c in cameras) or "(none)"
