"""``stream-agent make-test-model``: write a tiny (or realistic-shape) random checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from stream_agent.models.registry import family_names

    parser = subparsers.add_parser(
        "make-test-model",
        help="write a randomly initialised checkpoint of a model family (for tests, benchmarks)",
        description=(
            "Write a randomly initialised, non-degenerate checkpoint of a model family, with a "
            "locally built tokenizer and the family's chat template and image processor, "
            "loadable with --model DIR like a real model. Nothing is downloaded."
        ),
    )
    parser.add_argument("folder", type=Path, metavar="DIR", help="folder to write (new or empty)")
    parser.add_argument(
        "--family", required=True, choices=family_names(), help="model family to build"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="real layer counts and widths (LLaVA-OneVision-0.5B: about 3.6 GB in float32)",
    )
    parser.add_argument(
        "--force", action="store_true", help="write into a non-empty folder, replacing files"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream_agent.models.testing import make_test_model

    folder = make_test_model(
        args.family, args.folder, seed=args.seed, realistic=args.realistic, overwrite=args.force
    )
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    print(f"{folder}\t{args.family}\tseed {args.seed}\t{size / 1e6:.1f} MB")
    return 0
