"""The ``stream-agent`` command line: one sub-command per module in ``stream_agent.commands``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code. Command modules
are imported lazily by name so that ``stream-agent --help`` does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from stream_agent.errors import StreamAgentError
from stream_agent.log_redact import install_redaction

# command name -> module under stream_agent.commands that registers it
COMMANDS: dict[str, str] = {
    "probe": "probe",
    "make-test-model": "models",
    "ask-file": "ask_file",
    "check-config": "check_config",
    "ask": "ask",
    "serve": "serve",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; with ``only``, import just that command's module."""
    parser = argparse.ArgumentParser(
        prog="stream-agent",
        description="Watch live video and answer questions about it.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument(
        "-q", "--quiet", action="count", default=0, help="less log output: warnings and errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    seen: set[str] = set()
    for name, module in COMMANDS.items():
        if module in seen or (only is not None and name != only):
            continue
        seen.add(module)
        importlib.import_module(f"stream_agent.commands.{module}").register(sub)
    return parser


def configure_logging(verbosity: int) -> None:
    """Log to stderr: INFO by default, DEBUG with -vv, WARNING with -q; credentials are masked
    in every record at every level (:mod:`stream_agent.log_redact`)."""
    if verbosity < 0:
        level = logging.WARNING
    else:
        level = logging.WARNING - 10 * min(verbosity, 2)
        level = min(level, logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_redaction()


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Import only the command being run, unless the user asks for help on the whole tool.
    only = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(only if only in COMMANDS else None)
    args = parser.parse_args(args_list)
    args.verbose = args.verbose - args.quiet
    configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except StreamAgentError as exc:
        print(f"stream-agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
