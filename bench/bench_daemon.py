"""Benchmark the daemon's pipeline while it ingests: frame lag behind live, question TTFT, and the
highest sampling rate the machine sustains, uncompressed against STC (cacher + pruner).

The parts are the daemon's own, in one process: a :class:`~stream_agent.pipeline.CameraFeed`
replays the shared clip live through ingest (real-time pace, decode thread, evidence JPEGs for
the camera board), the :class:`~stream_agent.engine.Engine` thread drives the real
:class:`~stream_agent.pipeline.ModelWorker` (vision chain and ReKV memory on disk, in a
temporary folder). No WebSocket: the server adds nothing to these numbers. For each model and
each way:

* **live at ``--fps``** (default 1) for ``--seconds``: the engine's frame lag (capture to end of
  encoding, sampled four times a second after the first frame; median and max), frames the
  engine shed, and the time to first token of ``--questions`` questions asked while frames keep
  arriving (from the question's receipt, so it includes waiting for the frame being encoded;
  answers are one token long by default, never stopped early, so that the time to the first
  token is measured even where random weights generate no visible text);
* **saturation**: frames fed as fast as ingest decodes them (sampled at ``--saturation-fps``
  frames per second of video) for ``--saturation-seconds``: frames encoded per second is the
  highest sampling rate the engine keeps up with; a confirming live run at 90% of it (at most
  the clip's own 10 fps, the most a live replay delivers) should shed no frame
  (``--no-confirm`` skips it).

Ways: ``uncompressed`` (cacher ``none``, pruner ``none``: every frame's full vision encode and all
its tokens) and ``stc`` (STC-Cacher ``paper`` mode, interval 2, ratio 0.25; STC-Pruner keeping
``--keep-ratio`` of each frame's tokens). Models: ``tiny`` (the test checkpoint: 98 px, 16 tokens
per frame) and ``realistic`` (LLaVA-OneVision-0.5B shapes with random weights: SigLIP-so400m at
384 px, 196 tokens per frame, Qwen2-0.5B; about 3.6 GB of RAM in float32).

Prints a table and writes ``bench/results/daemon.json``. Run from the repository root:

    .venv/bin/python bench/bench_daemon.py [--models tiny,realistic] [--modes uncompressed,stc]
        [--fps 1] [--seconds 30] [--questions 3] [--saturation-seconds 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ingest import IngestOptions, probe_source_sync
from stream_agent.cameras import CameraBoard
from stream_agent.config import DaemonConfig
from stream_agent.engine import AnswerFinal, Engine, Question, question_received_now
from stream_agent.models import DecodeOptions, VideoLLM
from stream_agent.models.testing import build_test_adapter
from stream_agent.pipeline import CameraFeed, ModelWorker

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "daemon.json"
CLIP = ROOT.parent / "shared" / "data" / "one-by-one-person-detection.mp4"
CAMERA = "bench"
QUESTIONS = (
    "What is the person doing?",
    "How many people have walked past so far?",
    "Describe what changed in the last few seconds.",
)


def daemon_config(mode: str, store: Path, args: argparse.Namespace) -> DaemonConfig:
    compressed = mode == "stc"
    return DaemonConfig.model_validate(
        {
            "cameras": [{"name": CAMERA, "path": str(CLIP), "fps": args.fps}],
            "model": {"max_new_tokens": args.answer_tokens},
            "cacher": {"method": "stc" if compressed else "none"},
            "pruner": (
                {"method": "stc", "keep_ratio": args.keep_ratio}
                if compressed
                else {"method": "none", "tokens_per_frame": None}
            ),
            "memory": {"store_dir": str(store)},
            "engine": {"max_batch_frames": args.batch},
        }
    )


class Run:
    """One engine + worker over a fresh memory, for one model and one way."""

    def __init__(self, model: VideoLLM, mode: str, args: argparse.Namespace) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="bench-daemon-")
        self.config = daemon_config(mode, Path(self._folder.name), args)
        # never stop early: every answer generates its tokens, so each one has a first token
        decode = DecodeOptions(max_new_tokens=args.answer_tokens, stop_ids=())
        self.worker = ModelWorker(self.config, load=lambda: model, model_name=mode, decode=decode)
        self.engine = Engine(self.worker, self.config.engine)
        self.board = CameraBoard([CAMERA])

    async def __aenter__(self) -> Run:
        self.engine.start()
        await asyncio.wrap_future(self.worker.opened)
        return self

    async def __aexit__(self, *exc: object) -> None:
        # a batch being encoded is not interrupted: wait for it (slow with large models)
        if not await self.engine.aclose("cancel", grace_s=300):
            raise RuntimeError("the engine thread did not end")
        self._folder.cleanup()

    def feed(self, options: IngestOptions) -> CameraFeed:
        camera = self.config.cameras[0]
        return CameraFeed(camera, str(CLIP), engine=self.engine, board=self.board, options=options)

    def counts(self) -> tuple[int, int]:
        snap = self.engine.snapshot()
        return snap.frames_encoded.get(CAMERA, 0), snap.frames_dropped.get(CAMERA, 0)

    def compression(self) -> dict[str, float | None]:
        memory = self.engine.snapshot().worker.camera(CAMERA)
        if memory is None:
            return {"cacher_reuse_share": None, "pruner_kept_share": None}
        return {
            "cacher_reuse_share": memory.cacher_reuse_share,
            "pruner_kept_share": memory.pruner_kept_share,
        }


async def ask(engine: Engine, index: int) -> AnswerFinal:
    question = Question(
        request_id=f"q{index}",
        text=QUESTIONS[index % len(QUESTIONS)],
        camera=CAMERA,
        received_at=question_received_now(),
    )
    _text, final = await engine.ask(question).collect()
    if not isinstance(final, AnswerFinal):
        raise RuntimeError(f"question {index} failed: {final}")
    return final


async def live(run: Run, fps: float, seconds: float, questions: int) -> dict[str, Any]:
    """Replay the clip live at ``fps`` for ``seconds``; sample the lag; ask ``questions``."""
    task = asyncio.create_task(run.feed(IngestOptions(fps=fps, loop=True)).run())
    lags: list[float] = []
    finals: list[AnswerFinal] = []
    began = time.monotonic()
    ask_at = [seconds * (i + 1) / (questions + 1) for i in range(questions)]
    pending: asyncio.Task[AnswerFinal] | None = None
    try:
        while time.monotonic() - began < seconds:
            await asyncio.sleep(0.25)
            lag = run.engine.snapshot().frame_lag_s.get(CAMERA)
            if lag is not None:
                lags.append(lag)
            if pending is not None and pending.done():
                finals.append(pending.result())
                pending = None
            if pending is None and ask_at and time.monotonic() - began >= ask_at[0]:
                ask_at.pop(0)
                pending = asyncio.create_task(ask(run.engine, len(finals)))
        if pending is not None:
            finals.append(await pending)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    encoded, dropped = run.counts()
    ttfts = [t for t in (first_token_s(f) for f in finals) if t is not None]
    return {
        "answer_s": [f.timings.total_s for f in finals],
        "answer_tokens": [f.tokens for f in finals],
        "fps": fps,
        "seconds": seconds,
        "frames_encoded": encoded,
        "frames_dropped": dropped,
        "lag_median_s": statistics.median(lags) if lags else None,
        "lag_max_s": max(lags) if lags else None,
        "ttft_s": ttfts,
        "ttft_median_s": statistics.median(ttfts) if ttfts else None,
        "answer_tokens_per_s": [f.timings.tokens_per_s for f in finals],
    }


def first_token_s(final: AnswerFinal) -> float | None:
    """Receipt to the first token: the engine's TTFT where the answer has text; for a one-token
    answer without text (random weights often pick tokens that decode to nothing) its whole
    time, which is the same span."""
    if final.timings.ttft_s is not None:
        return final.timings.ttft_s
    return final.timings.total_s if final.tokens == 1 else None


async def saturation(run: Run, sample_fps: float, seconds: float) -> dict[str, Any]:
    """Feed frames as fast as ingest decodes them; frames encoded per second is the ceiling.

    Counted between batch completions (the first one is the warm-up), over at least ``seconds``
    and at least two more completions (giving up after ten times ``seconds``)."""
    options = IngestOptions(fps=sample_fps, realtime=False, loop=True)
    task = asyncio.create_task(run.feed(options).run())
    completions: list[tuple[float, int]] = []
    try:
        began = time.monotonic()
        last = run.counts()[0]
        while True:
            await asyncio.sleep(0.05)
            encoded = run.counts()[0]
            now = time.monotonic()
            if encoded != last:
                completions.append((now, encoded))
                last = encoded
            enough = len(completions) >= 3 and now - completions[0][0] >= seconds
            if enough or now - began > 10 * seconds:
                break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if len(completions) < 2:
        return {"sample_fps": sample_fps, "seconds": None, "frames": 0, "encoded_per_s": None}
    (t0, n0), (t1, n1) = completions[0], completions[-1]
    return {
        "sample_fps": sample_fps,
        "seconds": t1 - t0,
        "frames": n1 - n0,
        "encoded_per_s": (n1 - n0) / (t1 - t0),
    }


async def bench_mode(
    model: VideoLLM, name: str, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "mode": mode}
    async with Run(model, mode, args) as run:
        row["live"] = await live(run, args.fps, args.seconds, args.questions)
        row.update(run.compression())
    async with Run(model, mode, args) as run:
        row["saturation"] = await saturation(run, args.saturation_fps, args.saturation_seconds)
    ceiling = row["saturation"]["encoded_per_s"]
    if not args.no_confirm and ceiling:
        # a live replay cannot deliver more frames per second than the clip has
        rate = round(min(0.9 * ceiling, clip_fps()), 3)
        async with Run(model, mode, args) as run:
            confirm = await live(run, rate, args.confirm_seconds, 0)
        row["confirm"] = confirm
    return row


@cache
def clip_fps() -> float:
    return probe_source_sync(str(CLIP)).fps or 10.0


def build(name: str, args: argparse.Namespace) -> VideoLLM:
    return build_test_adapter(
        "llava_onevision", realistic=name == "realistic", device=args.device, dtype="float32"
    )


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | way | live fps | lag median / max (s) | shed | TTFT median (s) | "
        "sustained fps (saturation) | confirm 90%: shed | cacher reuse | pruner kept |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        live_ = r["live"]
        sat = r["saturation"]
        confirm = r.get("confirm")
        lines.append(
            f"| {r['model']} | {r['mode']} | {live_['fps']:g} | "
            f"{fmt(live_['lag_median_s'])} / {fmt(live_['lag_max_s'])} | "
            f"{live_['frames_dropped']} of {live_['frames_encoded'] + live_['frames_dropped']} | "
            f"{fmt(live_['ttft_median_s'])} | {fmt(sat['encoded_per_s'])} | "
            f"{'-' if confirm is None else confirm['frames_dropped']} at "
            f"{'-' if confirm is None else fmt(confirm['fps'])} fps | "
            f"{fmt(r.get('cacher_reuse_share'))} | {fmt(r.get('pruner_kept_share'))} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in args.models:
        began = time.perf_counter()
        model = build(name, args)
        print(f"built the {name} model in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        try:
            for mode in args.modes:
                print(f"  {name} / {mode} ...", file=sys.stderr)
                rows.append(await bench_mode(model, name, mode, args))
        finally:
            del model
            gc.collect()
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,realistic", type=lambda s: s.split(","))
    parser.add_argument("--modes", default="uncompressed,stc", type=lambda s: s.split(","))
    parser.add_argument("--fps", type=float, default=1.0, help="live sampling rate")
    parser.add_argument("--seconds", type=float, default=30.0, help="live run length")
    parser.add_argument("--questions", type=int, default=3, help="questions per live run")
    parser.add_argument(
        "--answer-tokens", type=int, default=1, help="max_new_tokens (1: TTFT = answer time)"
    )
    parser.add_argument(
        "--batch", type=int, default=4, help="engine.max_batch_frames (the daemon's default: 4)"
    )
    parser.add_argument("--keep-ratio", type=float, default=0.25, help="STC-Pruner's share")
    parser.add_argument("--saturation-fps", type=float, default=2.0)
    parser.add_argument("--saturation-seconds", type=float, default=20.0)
    parser.add_argument("--confirm-seconds", type=float, default=20.0)
    parser.add_argument("--no-confirm", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for name in args.models:
        if name not in ("tiny", "realistic"):
            parser.error(f"unknown model {name!r}; use tiny, realistic")
    for mode in args.modes:
        if mode not in ("uncompressed", "stc"):
            parser.error(f"unknown way {mode!r}; use uncompressed, stc")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not CLIP.is_file():
        print(f"the shared clip is absent ({CLIP})", file=sys.stderr)
        return 2
    rows = asyncio.run(main_async(args))
    print(table(rows))
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
