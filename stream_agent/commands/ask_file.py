"""``stream-agent ask-file VIDEO "question" --model DIR``: the uncompressed reference answer.

Samples ``--frames`` frames uniformly over the file, encodes every visual token of each into a
full KV cache (a progress bar on stderr while it does), then streams the answer to stdout. This is
the baseline the streaming memory's answers and first-token logits are compared with.

Frames come from the ``ingest`` package in its as-fast-as-possible file mode: sampled by time at
``N / duration`` frames per second (the first frame at or after each ``k * duration / N``), or, for
a file that declares no duration, by counting its frames first and taking evenly spaced ones.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from stream_agent.errors import SourceError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ask-file",
        help="answer a question about a video file with the full, uncompressed model",
        description=(
            "Sample frames uniformly from VIDEO, encode all their visual tokens into a full KV "
            "cache and stream the model's answer to QUESTION (the reference answer)."
        ),
    )
    parser.add_argument("video", type=Path, metavar="VIDEO", help="video file")
    parser.add_argument("question", metavar="QUESTION", help="question about the video")
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="model folder (or Hugging Face id)"
    )
    parser.add_argument(
        "--frames", type=int, default=8, metavar="N", help="frames to sample (default 8)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, metavar="N", help="answer length limit"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy (default); >0 samples"
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--system", default=None, help="system message, if any")
    parser.set_defaults(func=run)


async def _read_frames(
    path: Path, count: int, on_frame: Callable[[npt.NDArray[np.uint8], float], None]
) -> int:
    """Give ``on_frame(image, seconds)`` up to ``count`` frames spread uniformly over ``path``;
    return how many."""
    from ingest import IngestError, IngestOptions, SourceSpec, open_source, probe_source
    from stream_agent.models.reference import uniform_indices

    try:
        spec = SourceSpec.parse(str(path))
        info = await probe_source(spec)
        if info.live:
            raise SourceError(f"{path} is a live source; ask-file needs a recorded file")
        if info.duration_s and info.duration_s > 0:
            options = IngestOptions(fps=count / info.duration_s, realtime=False)
            wanted: set[int] | None = None
        else:
            log.info("%s declares no duration; counting its frames first", path)
            total = 0
            async with open_source(spec, IngestOptions(fps=None, realtime=False)) as source:
                async for _ in source:
                    total += 1
            options = IngestOptions(fps=None, realtime=False)
            wanted = set(uniform_indices(total, count))
        taken = 0
        async with open_source(spec, options) as source:
            async for frame in source:
                if wanted is not None and frame.seq not in wanted:
                    continue
                on_frame(frame.image, frame.pts)
                taken += 1
                if taken == count:
                    break
    except IngestError as exc:
        raise SourceError(str(exc)) from exc
    if taken == 0:
        raise SourceError(f"{path} has no video frames")
    return taken


class _ProgressBar:
    """A one-line progress bar; on a terminal it redraws, elsewhere it prints every 10 %."""

    def __init__(self, total: int, label: str, stream: TextIO) -> None:
        self._total = total
        self._label = label
        self._stream = stream
        self._tty = stream.isatty()
        self._start = time.monotonic()
        self._last_decile = -1
        self.update(0)

    def update(self, done: int) -> None:
        elapsed = time.monotonic() - self._start
        width = 30
        filled = width * done // self._total
        rate = f"{elapsed / done:.2f} s/frame" if done else ""
        line = f"{self._label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self._total} {rate}"
        if self._tty:
            self._stream.write("\r" + line)
        else:
            decile = 10 * done // self._total
            if decile == self._last_decile:
                return
            self._last_decile = decile
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


def run(args: argparse.Namespace) -> int:
    from stream_agent.models import DecodeOptions, load_model
    from stream_agent.models.reference import PromptBuilder, stream_answer

    if args.frames < 1:
        raise SourceError("--frames must be at least 1")
    if not args.video.is_file():
        raise SourceError(f"no video file at {args.video}; pass an existing file")
    options = DecodeOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    log.info("answering about %s from %d frames with %s", args.video, args.frames, model.family)
    started = time.monotonic()
    builder = PromptBuilder(model, args.question, system=args.system)
    bar = _ProgressBar(args.frames, "encoding frames", sys.stderr)

    def add(frame: npt.NDArray[np.uint8], seconds: float) -> None:
        builder.add_frame(frame, seconds)
        bar.update(builder.frames)

    try:
        asyncio.run(_read_frames(args.video, args.frames, add))
    finally:
        bar.close()
    prepared = builder.finish()
    encoded = time.monotonic()
    generated = 0
    for step in stream_answer(model, prepared, options):
        generated += 1
        sys.stdout.write(step.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    log.info(
        "answer: %d tokens after a %d-token prompt from %d frames; encode %.1f s, decode %.1f s",
        generated,
        prepared.prompt_tokens,
        prepared.frames,
        encoded - started,
        time.monotonic() - encoded,
    )
    return 0
