"""The daemon's configuration sections and :class:`DaemonConfig`, the one object made of them.

Every section is a frozen pydantic model that rejects unknown keys (``extra="forbid"``).
Adding a section (``mqtt:``, ``alerts:``) is one change here: define its model on
:class:`_Section` (in this module or one of its own) and add one field to :class:`DaemonConfig`;
file loading (:mod:`~stream_agent.config.loading`: errors with line numbers, unknown-key hints)
walks the models and needs nothing more, and ``DaemonConfig.summary`` is where a line about it
goes. Secrets (the bearer token, camera passwords) are only named here, never held
(:mod:`~stream_agent.config.secrets` reads them); durations are parsed by
:mod:`stream_agent.durations`, the same parser as the protocol's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from ingest.redact import redact_url
from stream_agent.alerts.config import AlertsConfig, MqttConfig
from stream_agent.alerts.topics import RESERVED_CAMERA_NAMES
from stream_agent.durations import check_seconds, parse_duration

DEFAULT_MODEL_ID = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_PORT = 8765
CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------------


def _duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return check_seconds(value)
    return value


def _relative_to_file(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


def _env_name(value: str) -> str:
    if not ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


Seconds = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
"""A duration: a number of seconds or a string like ``"10m"``, ``"7d"``."""
ConfigPath = Annotated[Path, AfterValidator(_relative_to_file)]
EnvName = Annotated[str, AfterValidator(_env_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class ServerConfig(_Section):
    """WebSocket and HTTP on one port, with the safety caps."""

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    token_env: EnvName | None = None
    token_file: ConfigPath | None = None
    max_clients: int = Field(default=16, ge=1, le=10_000)
    max_message_bytes: int = Field(default=65_536, ge=1024)
    """Larger messages get a ``bad_request`` error; the connection stays open."""
    transport_max_message_bytes: int = Field(default=1_048_576, ge=1024)
    """Larger messages close the connection (code 1009): the memory bound of one read."""
    max_questions_in_flight: int = Field(default=2, ge=1, le=64)
    send_queue_messages: int = Field(default=256, ge=4)
    max_subscriptions: int = Field(default=16, ge=1, le=1000)
    """Alert event subscriptions per connection."""
    event_queue_messages: int = Field(default=128, ge=1, le=100_000)
    """Per connection: alert event pushes waiting to be sent; beyond it the oldest is dropped
    (counted in ``stream_agent_ws_event_drops_total``)."""
    write_limit_bytes: int = Field(default=65_536, ge=1024)
    slow_client_timeout_s: Seconds = Field(default=5.0, gt=0)
    auth_timeout_s: Seconds = Field(default=10.0, gt=0)
    ping_interval_s: Seconds = 20.0
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed besides the server's own (``http://host:port``)."""
    web_root: ConfigPath | None = None
    """Folder of the web client; default: ``clients/web`` of this installation, if present."""
    evidence_frames_bytes: ByteSize = Field(default=ByteSize(32 * 1024 * 1024), ge=0)
    """Per camera: byte budget of kept JPEG frames served as evidence."""
    evidence_frame_max_side: int = Field(default=480, ge=32, le=4096)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.token_env is not None and self.token_file is not None:
            raise ValueError("give either token_env or token_file, not both")
        if self.transport_max_message_bytes < self.max_message_bytes:
            raise ValueError("transport_max_message_bytes must be at least max_message_bytes")
        return self


class CameraConfig(_Section):
    """One named video source: exactly one of ``url``, ``path``, ``device``."""

    name: str
    url: str | None = None
    path: ConfigPath | None = None
    device: str | None = None
    fps: float = Field(default=1.0, gt=0, le=60)
    transport: Literal["tcp", "udp", "auto"] = "tcp"
    enabled: bool = True
    username: str | None = None
    password_env: EnvName | None = None
    password_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not CAMERA_NAME.match(self.name):
            raise ValueError(
                f"camera name {self.name!r} must be 1-63 letters, digits, '-' or '_' "
                "(it appears in URLs and metric labels)"
            )
        given = [k for k in ("url", "path", "device") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"camera {self.name!r} needs exactly one of url, path, device (got "
                f"{', '.join(given) or 'none'})"
            )
        if self.url is not None and "://" not in self.url:
            raise ValueError(f"camera {self.name!r}: url {redact_url(self.url)!r} has no scheme")
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give either password_env or password_file, not both")
        if (self.password_env or self.password_file) and self.url is None:
            raise ValueError("camera credentials apply to url sources only")
        return self

    @property
    def location(self) -> str:
        """The source as ingest takes it (URL, file path or device), without credentials."""
        return self.url or str(self.path or self.device)


class ModelConfig(_Section):
    """Which model to load: a Hugging Face ``id`` or a local ``path``, and where."""

    id: str | None = None
    path: ConfigPath | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    quantize: Literal["none", "int8"] = "none"
    """int8: dynamic int8 inference on CPU for ``quantize_parts`` (the vision tower's and the
    LLM's projections); refused on a GPU, where half precision is the fast path."""
    quantize_parts: tuple[Literal["vision", "llm"], ...] = ("vision", "llm")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.id is not None and self.path is not None:
            raise ValueError("give either id or path, not both")
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", self.device):
            raise ValueError(f"device {self.device!r}: use auto, cpu, cuda, cuda:N or mps")
        return self

    @property
    def source(self) -> str:
        """The local folder if given, else the hub id (default LLaVA-OneVision-Qwen2-0.5B)."""
        if self.path is not None:
            return str(self.path)
        return self.id or DEFAULT_MODEL_ID


class GateSection(_Section):
    """The change gate before the vision encoder (``cacher.gate``): a frame that shows nothing
    new against the camera's last encoded frame costs no vision encode and no prefill; the
    memory extends its newest block's time span instead. The fields mirror
    :class:`cacher.GateConfig` (which validates them again); see docs/config.md."""

    enabled: bool = True
    width: int = Field(default=64, ge=1)
    height: int = Field(default=36, ge=1)
    cell: int = Field(default=4, ge=1)
    cell_threshold: float = Field(default=12.0, ge=0)
    changed_share: float = Field(default=0.01, ge=0, le=1)
    min_cells: int = Field(default=1, ge=1)
    compensate_brightness: bool = True
    brightness_threshold: float = Field(default=24.0, ge=0)
    max_age_s: Seconds | None = Field(default=30.0, gt=0)
    max_skipped: int | None = Field(default=None, ge=0)


class CacherConfig(_Section):
    """STC-Cacher: reuse vision-encoder work where the picture did not change."""

    gate: GateSection = Field(default_factory=GateSection)

    method: Literal["stc", "adaptive", "none"] = "stc"
    """stc: the released STC-Cacher (a fixed schedule and share); adaptive: the share recomputed
    follows how much the scene changed, and the reference refreshes when it drifts; none: every
    frame in full."""
    update_token_ratio: float = Field(default=0.25, gt=0, le=1)
    cache_interval: int = Field(default=2, ge=1)
    cache_half_precision: bool = False
    """Keep each stream's cached reference in float16 (halves its memory; meant for GPUs)."""
    yield_every: int = Field(default=2, ge=1)
    """Vision layers between two looks at the question queue during a frame's encode: a
    question waits at most this many layers of one frame, not the whole frame."""


class PrunerConfig(_Section):
    """Token selection before the LLM."""

    method: Literal["stc", "dycoke", "holitom", "metok", "none"] = "stc"
    tokens_per_frame: int | None = Field(default=64, ge=1)
    keep_ratio: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.keep_ratio is not None and "tokens_per_frame" in self.model_fields_set:
            raise ValueError("give either tokens_per_frame or keep_ratio, not both")
        return self


class DyCokeCompression(_Section):
    """DyCoke's decode-time pruning of the retrieved KV (see docs/config.md)."""

    method: Literal["dycoke"]
    prune: float = Field(default=0.7, ge=0, lt=1)
    layer: int | None = Field(default=None, ge=1)
    threshold: float = Field(default=0.9, ge=-1, le=1)


class HoliTomCompression(_Section):
    """HoliTom's once-at-a-middle-layer keep-and-merge (see docs/config.md)."""

    method: Literal["holitom"]
    prune: float = Field(default=0.5, ge=0, lt=1)
    layer: int | None = Field(default=None, ge=1)
    merge: bool = True


class METokCompression(_Section):
    """METok's prefill pruning at a few layers (see docs/config.md)."""

    method: Literal["metok"]
    prune: float = Field(default=0.24, ge=0, le=1)
    non_key_prune: float = Field(default=0.62, ge=0, le=1)
    deep_prune: float = Field(default=1.0, ge=0, le=1)
    key_events: int = Field(default=3, ge=0)
    layers: tuple[Annotated[int, Field(ge=1)], ...] | None = None


CompressionName = Literal["none", "dycoke", "holitom", "metok"]
CompressionMethod = Annotated[
    DyCokeCompression | HoliTomCompression | METokCompression, Field(discriminator="method")
]


class MemoryConfig(_Section):
    """ReKV memory: sliding window, retrieval and where the KV blocks live."""

    window_tokens: int = Field(default=15_000, ge=1)
    top_k: int = Field(default=64, ge=1)
    ram_budget: ByteSize = Field(default=ByteSize(2 * 1024**3), ge=0)
    disk_budget: ByteSize = Field(default=ByteSize(20 * 1024**3), ge=0)
    store_dir: ConfigPath = Path("var/memory")
    retention_s: Seconds = Field(default=7 * 86400.0, gt=0)
    store_dtype: Literal["float16", "bfloat16", "float32", "int8"] = "float16"
    """How KV blocks are kept on disk: int8 is the 8-bit codec (per-channel scales, about half
    of float16's bytes); a store keeps the dtype it was created with."""
    retrieval: Literal["internal", "embedding", "hybrid"] = "internal"
    """internal: ReKV's per-layer question query against each block's mean key; embedding:
    the question's token embeddings against each block's embedding sketch, one selection for
    all layers; hybrid: half of top_k by embedding, the rest per layer."""
    compression: (
        CompressionName | CompressionMethod | tuple[CompressionName | CompressionMethod, ...]
    ) = "none"
    """In-context compression of the answer path: a method name, a method with settings
    (``{method: metok, prune: 0.5}``) or a list of them combined; off (``none``) by default."""


class RayPlacementConfig(_Section):
    """Engines as actors on a Ray cluster (``pip install stream-agent[ray]``)."""

    address: str | None = None
    """The cluster to join (``ray://host:10001`` or ``host:6379``); None starts a local one."""
    engines: int = Field(default=2, ge=1, le=4096)
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per engine actor (1 for one model per GPU; 0.5 puts two engines on a GPU)."""
    num_cpus: float = Field(default=1.0, gt=0)
    flush_interval_s: Seconds = Field(default=30.0, gt=0)
    """How often every engine writes its memories to the shared store: at most this much of a
    camera's memory is lost when its engine dies."""
    health_interval_s: Seconds = Field(default=1.0, gt=0)
    """How often the front checks its engines (and refreshes their status)."""


def _placement_kind(value: object) -> object:
    return {"kind": value} if isinstance(value, str) else value


class PlacementConfig(_Section):
    """Where the engines run: ``local`` (one thread here; no Ray) or ``ray``."""

    kind: Literal["local", "ray"] = "local"
    ray: RayPlacementConfig = Field(default_factory=RayPlacementConfig)


class EngineConfig(_Section):
    """The engine thread's bounded queues and what happens when they are full."""

    placement: Annotated[PlacementConfig, BeforeValidator(_placement_kind)] = Field(
        default_factory=PlacementConfig
    )
    """``local`` (the default) or ``{kind: ray, ray: {...}}`` (see docs/placement.md)."""

    frame_queue_per_camera: int = Field(default=8, ge=1)
    frame_overflow: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    """drop_oldest: the newest frame wins; drop_newest: keep what is queued, refuse the new one."""
    question_queue: int = Field(default=32, ge=1)
    question_overflow: Literal["reject"] = "reject"
    """A question that finds the queue full gets a ``busy`` error; questions are never dropped."""
    max_batch_frames: int = Field(default=1, ge=1)
    """Frames of one camera the engine takes per turn. Frames are encoded one after the other
    either way, so 1 (the default) gives the shortest wait to a question that arrives meanwhile."""
    answer_buffer_events: int = Field(default=256, ge=2)
    shutdown: Literal["finish", "cancel"] = "finish"
    shutdown_grace_s: Seconds = 10.0


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: ConfigPath | None = None


class DaemonConfig(_Section):
    """The whole daemon's configuration."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    cameras: tuple[CameraConfig, ...] = Field(min_length=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    cacher: CacherConfig = Field(default_factory=CacherConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    mqtt: MqttConfig | None = None
    """The MQTT broker the alerts publish to (docs/alerts.md); None: no MQTT."""
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    """Alert rules and their history (docs/alerts.md)."""

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.name in seen:
                raise ValueError(f"two cameras are named {cam.name!r}; names must be unique")
            if cam.name in RESERVED_CAMERA_NAMES:
                raise ValueError(
                    f"camera name {cam.name!r} is reserved (an MQTT topic of the alerts: "
                    f"{', '.join(sorted(RESERVED_CAMERA_NAMES))}); choose another"
                )
            seen.add(cam.name)
        return self

    @model_validator(mode="after")
    def _check_alerts(self) -> Self:
        if self.alerts.mqtt is not None:
            raise ValueError(
                "alerts.mqtt: the broker settings are the top-level 'mqtt:' section; "
                "move them there"
            )
        names = {c.name for c in self.cameras}
        for rule in self.alerts.rules:
            if rule.cameras == "all":
                continue
            unknown = [c for c in rule.cameras if c not in names]
            if unknown:
                raise ValueError(
                    f"alerts rule {rule.name!r}: no camera named {unknown[0]!r}; cameras: "
                    f"{', '.join(sorted(names))}"
                )
        return self

    @property
    def alerts_config(self) -> AlertsConfig:
        """The alerts section with the top-level ``mqtt`` section inside (what
        :func:`stream_agent.alerts.build.build_alerts` takes)."""
        return self.alerts.model_copy(update={"mqtt": self.mqtt})

    @property
    def alerts_data_dir(self) -> Path:
        """Where the rule store, event history, outbox and event frames live by default: the
        memory's store folder."""
        return self.memory.store_dir

    @property
    def enabled_cameras(self) -> tuple[CameraConfig, ...]:
        return tuple(c for c in self.cameras if c.enabled)

    def summary(self) -> str:
        """A few lines for ``check-config`` and the start-up log (credentials redacted)."""
        s = self.server
        token = (
            f"token from env {s.token_env}"
            if s.token_env
            else f"token from file {s.token_file}"
            if s.token_file
            else "no token"
        )
        lines = [f"server: {s.host}:{s.port} ({token}, max {s.max_clients} clients)"]
        lines.append(f"cameras: {len(self.enabled_cameras)} enabled of {len(self.cameras)}")
        for cam in self.cameras:
            notes = [] if cam.enabled else ["disabled"]
            if cam.username is not None:
                notes.append(f"user {cam.username}")
            if cam.password_env is not None:
                notes.append(f"password from env {cam.password_env}")
            elif cam.password_file is not None:
                notes.append(f"password from file {cam.password_file}")
            extra = f" ({', '.join(notes)})" if notes else ""
            lines.append(f"  {cam.name}: {redact_url(cam.location)} @ {cam.fps:g} fps{extra}")
        m = self.model
        lines.append(f"model: {m.source} (device {m.device}, dtype {m.dtype})")
        lines.append(
            f"compression: cacher {self.cacher.method}, pruner {self.pruner.method}; "
            f"memory: top-{self.memory.top_k}, RAM {self.memory.ram_budget.human_readable()}, "
            f"disk {self.memory.disk_budget.human_readable()} in {self.memory.store_dir}"
        )
        mq = self.mqtt
        broker = "no MQTT" if mq is None else f"MQTT {mq.host}:{mq.port} prefix {mq.prefix}"
        if mq is not None and mq.username is not None:
            broker += f" (user {mq.username})"
        lines.append(f"alerts: {len(self.alerts.rules)} rule(s) in the file; {broker}")
        return "\n".join(lines)
