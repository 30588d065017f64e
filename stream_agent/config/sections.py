"""The daemon's one configuration object, validated, loaded from YAML, TOML or command-line flags.

:class:`DaemonConfig` is frozen and rejects unknown keys everywhere (``extra="forbid"``). Files
are read by :func:`load_config`; any unknown or invalid key is reported as a
:class:`~stream_agent.errors.ConfigError` naming the file and the LINE of the offending key
(pydantic knows only the key path, so the path is mapped back to the parsed document: YAML through
PyYAML's node marks, TOML through a small search over the text). :func:`from_flags` builds the
same object for ``stream-agent serve --source URL --model DIR`` with no file at all.

Secrets (the bearer token, camera passwords) never sit in the config itself and are never read
implicitly: the config names an environment variable (``token_env``) or a file (``token_file``),
and :func:`resolve_secrets` reads them from an environment mapping the caller passes in.
Relative paths in a file are relative to the file's folder.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote, urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from ingest.redact import redact_url
from stream_agent.durations import check_seconds, parse_duration
from stream_agent.errors import ConfigError

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


class CacherConfig(_Section):
    """STC-Cacher: reuse vision-encoder work where the picture did not change."""

    method: Literal["stc", "adaptive", "none"] = "stc"
    """stc: the released STC-Cacher (a fixed schedule and share); adaptive: the share recomputed
    follows how much the scene changed, and the reference refreshes when it drifts; none: every
    frame in full."""
    update_token_ratio: float = Field(default=0.25, gt=0, le=1)
    cache_interval: int = Field(default=2, ge=1)
    cache_half_precision: bool = False
    """Keep each stream's cached reference in float16 (halves its memory; meant for GPUs)."""


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


class MemoryConfig(_Section):
    """ReKV memory: sliding window, retrieval and where the KV blocks live."""

    window_tokens: int = Field(default=15_000, ge=1)
    top_k: int = Field(default=64, ge=1)
    ram_budget: ByteSize = Field(default=ByteSize(2 * 1024**3), ge=0)
    disk_budget: ByteSize = Field(default=ByteSize(20 * 1024**3), ge=0)
    store_dir: ConfigPath = Path("var/memory")
    retention_s: Seconds = Field(default=7 * 86400.0, gt=0)
    retrieval: Literal["internal", "embedding", "hybrid"] = "internal"
    """internal: ReKV's per-layer question query against each block's mean key; embedding:
    the question's token embeddings against each block's embedding sketch, one selection for
    all layers; hybrid: half of top_k by embedding, the rest per layer."""


class EngineConfig(_Section):
    """The engine thread's bounded queues and what happens when they are full."""

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

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.name in seen:
                raise ValueError(f"two cameras are named {cam.name!r}; names must be unique")
            seen.add(cam.name)
        return self

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
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """Secrets read at start-up; ``repr`` never shows them."""

    token: str | None = field(default=None, repr=False)
    camera_passwords: Mapping[str, str] = field(default_factory=dict, repr=False)

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
    return Secrets(token=token, camera_passwords=passwords)


# ---------------------------------------------------------------------------------------------
# Loading files
# ---------------------------------------------------------------------------------------------

Loc = tuple[int | str, ...]


def load_config(path: Path | str) -> DaemonConfig:
    """Read and validate a ``.yaml``/``.yml`` or ``.toml`` file; errors name file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, path)
    if suffix == ".toml":
        return parse_toml(text, path)
    raise ConfigError(f"{path}: unknown config format; name the file *.yaml, *.yml or *.toml")


def parse_yaml(text: str, path: Path) -> DaemonConfig:
    """Validate YAML text; ``path`` names it in errors and anchors relative paths."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if node is not None:
        _reject_duplicate_yaml_keys(node, path)
    return _validate(data, path, lambda loc: _yaml_line(node, loc))


def parse_toml(text: str, path: Path) -> DaemonConfig:
    """Validate TOML text; ``path`` names it in errors and anchors relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _validate(data, path, lambda loc: _toml_line(text, loc))


def _validate(
    data: object, path: Path, line_of: typing.Callable[[Loc], int | None]
) -> DaemonConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:1: the config must be a mapping of sections (server, cameras, ...)"
        )
    try:
        return DaemonConfig.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, line_of)) from None


def _describe(exc: ValidationError, path: Path, line_of: typing.Callable[[Loc], int | None]) -> str:
    errors = exc.errors(include_url=False)
    locs = [tuple(e["loc"]) for e in errors]
    messages = []
    for err in errors:
        loc: Loc = tuple(err["loc"])
        # A list whose items failed is also reported "too short"; the items' errors say it all.
        if err["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
            continue
        line = line_of(loc)
        where = f"{path}:{line}" if line is not None else str(path)
        messages.append(f"{where}: {_dotted(loc) or '(top level)'}: {_sentence(err, loc)}")
    first, *rest = messages
    if rest:
        first += f" (and {len(rest)} more: " + "; ".join(rest) + ")"
    return first


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _sentence(err: Any, loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"unknown key{suggestion} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return "this key is required"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def _fields_at(loc: Loc) -> list[str]:
    """The keys allowed at a location, found by walking the model classes."""
    model: Any = DaemonConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        info = model.model_fields.get(str(part))
        if info is None:
            return []
        model = _inner_model(info.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    """``tuple[CameraConfig, ...]`` / ``X | None`` -> the model class inside, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (tuple, list, typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


# --- YAML: node marks -------------------------------------------------------------------------


def _reject_duplicate_yaml_keys(node: yaml.Node, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise ConfigError(
                        f"{path}:{key.start_mark.line + 1}: key {key.value!r} appears twice "
                        f"(first on line {seen[key.value]})"
                    )
                seen[key.value] = key.start_mark.line + 1
            _reject_duplicate_yaml_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_yaml_keys(item, path)


def _yaml_line(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the key at ``loc`` (or of its nearest ancestor that exists)."""
    if root is None:
        return 1
    node: yaml.Node = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(
                (
                    (k, v)
                    for k, v in node.value
                    if isinstance(k, yaml.ScalarNode) and k.value == part
                ),
                None,
            )
            if match is None:
                return line
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


# --- TOML: a search over the text -------------------------------------------------------------

_TOML_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_TOML_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def _split_toml_key(text: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _toml_key_lines(text: str) -> dict[Loc, int]:
    """Map each key path defined in the text to its line (tables, arrays of tables, dotted keys).

    Keys inside inline tables and arrays are not mapped; errors there point at the line of the
    enclosing key, which is where the user has to look anyway.
    """
    lines: dict[Loc, int] = {}
    table: Loc = ()
    array_counts: dict[Loc, int] = {}
    in_multiline: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if raw.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _TOML_TABLE.match(raw)
        if header is not None and not _TOML_KEY.match(raw):
            names = _split_toml_key(header.group(2))
            prefix: Loc = ()
            # Resolve earlier arrays of tables along the way ([[cameras]] then [cameras.x]).
            for name in names:
                prefix = (*prefix, name)
                if prefix in array_counts and prefix != tuple(names):
                    prefix = (*prefix, array_counts[prefix] - 1)
            if header.group(1) == "[[":
                key = tuple(prefix)
                array_counts[key] = array_counts.get(key, 0) + 1
                lines.setdefault(key, number)
                table = (*key, array_counts[key] - 1)
            else:
                table = tuple(prefix)
            lines.setdefault(table, number)
            continue
        key_match = _TOML_KEY.match(raw)
        if key_match is None:
            continue
        full = (*table, *_split_toml_key(key_match.group(1)))
        for depth in range(len(table) + 1, len(full) + 1):
            lines.setdefault(full[:depth], number)
        rest = raw[key_match.end() :]
        for quote_kind in ('"""', "'''"):
            if rest.count(quote_kind) % 2 == 1:
                in_multiline = quote_kind
                break
    return lines


def _toml_line(text: str, loc: Loc) -> int | None:
    lines = _toml_key_lines(text)
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in lines:
            return lines[loc[:depth]]
    return 1


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------


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
        where = f"{flag}: " if flag else ""
        raise ConfigError(f"{where}{_sentence(err, loc)}") from None
