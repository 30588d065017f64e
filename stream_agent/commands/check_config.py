"""``stream-agent check-config FILE``: validate a config file without starting anything.

Prints ``OK`` and a summary (credentials redacted), or the error with the file's line number;
an invalid file exits with status 2. The secrets the file names (environment variables, files)
are read too, unless ``--no-secrets`` (for checking a file meant for another machine).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from stream_agent.config import load_config, resolve_secrets


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config",
        help="validate a YAML or TOML config file without starting the daemon",
        description=(
            "Validate a config file: unknown or invalid keys are reported with their line; "
            "exit status 2 when the file is invalid."
        ),
    )
    parser.add_argument("file", type=Path, help="the config file (*.yaml, *.yml or *.toml)")
    parser.add_argument(
        "--no-secrets",
        action="store_true",
        help="do not check that the token and password variables/files it names exist",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    if not args.no_secrets:
        # The one place the environment is read: handed over explicitly.
        resolve_secrets(config, os.environ)
    print(f"OK: {args.file}")
    print(config.summary())
    return 0
