"""``stream-agent serve``: run the daemon from a config file or from flags for the common case.

``stream-agent serve --config daemon.yaml`` or, with no file at all,
``stream-agent serve --source rtsp://cam.local/stream1 --model DIR`` (``--source`` may be given
several times, as ``NAME=URL``). Once everything runs it prints the address on stdout; SIGINT or
SIGTERM stop it cleanly (memories flushed to disk) with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ingest.redact import url_secrets
from stream_agent.config import (
    DEFAULT_MODEL_ID,
    DaemonConfig,
    LoggingConfig,
    Secrets,
    from_flags,
    load_config,
    resolve_secrets,
)
from stream_agent.errors import ConfigError
from stream_agent.log_redact import install_redaction

_FLAGS = (
    "source",
    "model",
    "host",
    "port",
    "fps",
    "token_env",
    "token_file",
    "device",
    "store_dir",
    "max_new_tokens",
    "mqtt_host",
    "mqtt_port",
)
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the daemon: watch the cameras and answer questions over WebSocket",
        description=(
            "Run the daemon. Either --config FILE (YAML or TOML; see docs/config.md) or the flags "
            "for the common case: --source (repeatable, [NAME=]URL|PATH|/dev/videoN) and --model "
            f"(a local folder or a Hugging Face id; default {DEFAULT_MODEL_ID}, which needs a "
            "reachable hub or the local Hugging Face cache). SIGINT/SIGTERM stop it cleanly."
        ),
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="the config file")
    parser.add_argument(
        "--source",
        action="append",
        metavar="[NAME=]URL",
        help="a camera: rtsp://..., a video file (replayed as live) or /dev/videoN; repeatable",
    )
    parser.add_argument("--model", metavar="DIR|ID", help="model folder or Hugging Face id")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8765; 0: any free)")
    parser.add_argument("--fps", type=float, help="frames per second to sample (default 1)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-env", metavar="NAME", help="read the bearer token from $NAME")
    token.add_argument(
        "--token-file", type=Path, metavar="FILE", help="read the bearer token from this file"
    )
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument(
        "--store-dir", type=Path, metavar="DIR", help="where memories are kept (var/memory)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, metavar="N", help="longest answer in tokens (256)"
    )
    parser.add_argument(
        "--mqtt-host", metavar="HOST", help="publish alerts to this MQTT broker (docs/alerts.md)"
    )
    parser.add_argument(
        "--mqtt-port", type=int, metavar="PORT", help="the MQTT broker's port (default 1883)"
    )
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> DaemonConfig:
    """The validated config: the file, or the flags (not both)."""
    given = [f"--{name.replace('_', '-')}" for name in _FLAGS if getattr(args, name) is not None]
    if args.config is not None:
        if given:
            raise ConfigError(
                f"give either --config or flags ({', '.join(given)}), not both; put those "
                "settings in the file"
            )
        return load_config(args.config)
    return from_flags(
        args.source or [],
        model=args.model,
        host=args.host,
        port=args.port,
        fps=args.fps,
        token_env=args.token_env,
        token_file=args.token_file,
        device=args.device,
        store_dir=args.store_dir,
        max_new_tokens=args.max_new_tokens,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
    )


def configure_logging(section: LoggingConfig, verbosity: int, secrets: Iterable[str] = ()) -> None:
    """Apply the config's level (unless -v asked for more, or -q for less) and log file; every
    handler masks credentials and the known ``secrets`` (:mod:`stream_agent.log_redact`)."""
    root = logging.getLogger()
    if verbosity == 0:
        root.setLevel(section.level)
    elif verbosity < 0:
        root.setLevel(logging.WARNING)
    if verbosity < 2:
        # websockets logs every connection and HTTP response at INFO; the server logs the
        # lifecycle lines that matter (client connected/disconnected) itself.
        logging.getLogger("websockets").setLevel(logging.WARNING)
    if section.file is not None:
        try:
            section.file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(section.file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the log file {section.file}: {exc.strerror}") from exc
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        root.addHandler(handler)
    install_redaction(secrets, root)


def known_secrets(config: DaemonConfig, secrets: Secrets) -> tuple[str, ...]:
    """Every secret the daemon holds: its token, the cameras' passwords and URL secrets."""
    found = [secrets.token or "", *secrets.camera_passwords.values()]
    for camera in config.enabled_cameras:
        found.extend(url_secrets(secrets.camera_url(camera)))
    return tuple(s for s in found if s)


def run(args: argparse.Namespace) -> int:
    from stream_agent.daemon import Daemon, serve

    config = config_from_args(args)
    # The one place the environment is read: handed over explicitly.
    secrets = resolve_secrets(config, os.environ)
    configure_logging(config.logging, args.verbose, known_secrets(config, secrets))

    def announce(daemon: Daemon) -> None:
        host = config.server.host
        where = f"[{host}]" if ":" in host else host
        print(
            f"stream-agent: serving on http://{where}:{daemon.port}/ "
            f"(WebSocket ws://{where}:{daemon.port}/ws); Ctrl-C stops",
            flush=True,
        )

    return asyncio.run(serve(config, secrets, on_ready=announce))
