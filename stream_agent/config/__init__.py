"""The daemon's one configuration object, validated, loaded from YAML, TOML or command-line flags.

:class:`DaemonConfig` (:mod:`~stream_agent.config.sections`) is frozen and rejects unknown keys
everywhere. Files are read by :func:`load_config` (:mod:`~stream_agent.config.loading`); any
unknown or invalid key is reported as a :class:`~stream_agent.errors.ConfigError` naming the file
and the line of the offending key. :func:`from_flags` (:mod:`~stream_agent.config.flags`) builds
the same object for ``stream-agent serve --source URL --model DIR``. :func:`resolve_secrets`
(:mod:`~stream_agent.config.secrets`) reads the secrets the config names. Credentials in URLs are
masked with ingest's :func:`~ingest.redact.redact_url`, the one redaction of the project.
"""

from ingest.redact import redact_url
from stream_agent.config.flags import from_flags, parse_source_flag
from stream_agent.config.loading import Loc, load_config, parse_toml, parse_yaml
from stream_agent.config.secrets import Secrets, resolve_secrets
from stream_agent.config.sections import (
    CAMERA_NAME,
    DEFAULT_MODEL_ID,
    DEFAULT_PORT,
    ENV_NAME,
    CacherConfig,
    CameraConfig,
    ConfigPath,
    DaemonConfig,
    EngineConfig,
    EnvName,
    GateSection,
    LoggingConfig,
    MemoryConfig,
    ModelConfig,
    PrunerConfig,
    Seconds,
    ServerConfig,
)

__all__ = [
    "CAMERA_NAME",
    "DEFAULT_MODEL_ID",
    "DEFAULT_PORT",
    "ENV_NAME",
    "CacherConfig",
    "CameraConfig",
    "ConfigPath",
    "DaemonConfig",
    "EngineConfig",
    "EnvName",
    "GateSection",
    "Loc",
    "LoggingConfig",
    "MemoryConfig",
    "ModelConfig",
    "PrunerConfig",
    "Seconds",
    "Secrets",
    "ServerConfig",
    "from_flags",
    "load_config",
    "parse_source_flag",
    "parse_toml",
    "parse_yaml",
    "redact_url",
    "resolve_secrets",
]
