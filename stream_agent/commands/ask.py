"""``stream-agent ask "question" [--camera NAME] [--since 10m]``: ask a running daemon.

The client itself lives in :mod:`clients.cli` (it needs only the protocol and ``websockets``);
this module plugs it into the ``stream-agent`` command line.
"""

from __future__ import annotations

import argparse
from typing import Any

from clients import cli


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ask",
        help="ask a running daemon a question and stream the answer",
        description=(
            "Connect to a running daemon, ask a question about its cameras, stream the answer "
            "and print the moments it was built from. Ctrl-C cancels the answer. Exit status: "
            "0 answered, 1 server error, 2 bad arguments, 3 no connection, 130 cancelled."
        ),
    )
    cli.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return cli.run(args)
