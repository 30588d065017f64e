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

Ways: ``uncompressed`` (no gate, cacher ``none``, pruner ``none``: every frame's full vision
encode and all its tokens), ``stc`` (no gate; STC-Cacher ``paper`` mode, interval 2, ratio 0.25;
STC-Pruner keeping ``--keep-ratio`` of each frame's tokens) and ``levers`` (issue 16, all on: the
change gate with its defaults, the ``adaptive`` cacher behind it, the STC-Pruner, int8 vision and
LLM on the CPU, questions served between vision layer groups every ``cacher.yield_every`` = 2
layers, KV blocks on disk in the 8-bit codec, ``memory.store_dtype: int8``). Clips
(``--clips``): ``shared`` (the shared clip), ``static`` (its first frame held) and ``pan`` (a
3/4-size crop of its first frame panned ``--pan-px`` pixels per second, back and forth: every
sampled frame changes everywhere). Per run: share of frames gated, vision and
prefill ms per frame the engine encoded (engine-thread time in the vision chain and in the
memory; a gated frame counts with its gate comparison), the question TTFT median and p95 while
frames flow and (``idle``) after the feed stopped and the queue drained, and the memory's disk
bytes per hour of video at ``--fps``. Models: ``tiny`` (the test checkpoint: 98 px, 16 tokens
per frame) and ``realistic`` (LLaVA-OneVision-0.5B shapes with random weights: SigLIP-so400m at
384 px, 196 tokens per frame, Qwen2-0.5B; about 3.6 GB of RAM in float32).

Prints a table and writes ``bench/results/daemon.json``. Run from the repository root:

    .venv/bin/python bench/bench_daemon.py [--models tiny,realistic] [--modes uncompressed,stc]
        [--fps 1] [--seconds 30] [--questions 3] [--saturation-seconds 20] [--device cpu]

Issue 16's run (realistic shapes, 120 s live per clip, levers against uncompressed):

    PYTHONPATH=$PWD .venv/bin/python bench/bench_daemon.py --models realistic \
        --modes uncompressed,levers --clips shared,static,pan --seconds 120 --questions 4 \
        --idle-questions 3 --no-confirm --json bench/results/daemon_levers.json
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
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from ingest import IngestOptions, probe_source_sync
from stream_agent.cameras import CameraBoard
from stream_agent.config import DaemonConfig
from stream_agent.engine import AnswerFinal, Engine, Question, question_received_now
from stream_agent.models import DecodeOptions, VideoLLM
from stream_agent.models.quantize import quantize_model
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


MODES = ("uncompressed", "stc", "levers")
CLIPS = ("shared", "static", "pan")


def derived_clip(kind: str, folder: Path, pan_px: float, seconds: float = 60.0) -> Path:
    """The shared clip itself, or a clip made from its first frame: ``static`` holds it,
    ``pan`` moves a 3/4-size crop across it at ``pan_px`` pixels per second, back and forth
    (the same size and rate as the shared clip)."""
    if kind == "shared":
        return CLIP
    with av.open(str(CLIP)) as source:
        stream = source.streams.video[0]
        rate = round(float(stream.average_rate or 10))
        first = next(source.decode(stream)).to_ndarray(format="rgb24")
    height, width = first.shape[:2]
    crop_w, crop_h = (width * 3 // 4) // 2 * 2, (height * 3 // 4) // 2 * 2
    path = folder / f"{kind}.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = crop_w, crop_h, "yuv420p"
        video.codec_context.time_base = Fraction(1, rate)
        travel = width - crop_w
        for i in range(int(seconds * rate)):
            if kind == "static":
                x = 0
            else:
                step = int(i * pan_px / rate) % (2 * travel)
                x = step if step < travel else 2 * travel - step
            y = (height - crop_h) // 2
            picture = np.ascontiguousarray(first[y : y + crop_h, x : x + crop_w])
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def daemon_config(mode: str, store: Path, args: argparse.Namespace, clip: Path) -> DaemonConfig:
    compressed = mode in ("stc", "levers")
    cacher: dict[str, Any] = {"method": "stc" if compressed else "none"}
    if mode == "levers":
        cacher = {"method": "adaptive", "yield_every": 2}
    else:
        cacher["gate"] = {"enabled": False}
    return DaemonConfig.model_validate(
        {
            "cameras": [{"name": CAMERA, "path": str(clip), "fps": args.fps}],
            "model": {"max_new_tokens": args.answer_tokens},
            "cacher": cacher,
            "pruner": (
                {"method": "stc", "keep_ratio": args.keep_ratio}
                if compressed
                else {"method": "none", "tokens_per_frame": None}
            ),
            "memory": {
                "store_dir": str(store),
                "store_dtype": "int8" if mode == "levers" else "float16",
            },
            "engine": {
                "max_batch_frames": args.batch,
                "frame_queue_per_camera": args.frame_queue,
            },
        }
    )


class Run:
    """One engine + worker over a fresh memory, for one model and one way."""

    def __init__(self, model: VideoLLM, mode: str, args: argparse.Namespace, clip: Path) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="bench-daemon-")
        self.clip = clip
        self.config = daemon_config(mode, Path(self._folder.name), args, clip)
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
        return CameraFeed(
            camera, str(self.clip), engine=self.engine, board=self.board, options=options
        )

    def counts(self) -> tuple[int, int]:
        snap = self.engine.snapshot()
        return snap.frames_encoded.get(CAMERA, 0), snap.frames_dropped.get(CAMERA, 0)

    def compression(self) -> dict[str, float | None]:
        memory = self.engine.snapshot().worker.camera(CAMERA)
        if memory is None:
            return {"cacher_reuse_share": None, "pruner_kept_share": None}
        reasons = dict(memory.gate_reasons)
        decided = sum(reasons.values())
        return {
            "cacher_reuse_share": memory.cacher_reuse_share,
            "pruner_kept_share": memory.pruner_kept_share,
            "gate_reasons": reasons,
            "gated_share": reasons.get("unchanged", 0) / decided if decided else 0.0,
            "reused_extensions": memory.reused_extensions,
            "blocks": memory.blocks,
            "disk_bytes": memory.disk_bytes,
            "vision_s": memory.vision_s,
            "prefill_s": memory.prefill_s,
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


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1)]


async def idle_ttft(run: Run, questions: int) -> dict[str, Any]:
    """TTFT with no frames flowing: wait for the queue to drain, then ask one at a time."""
    deadline = time.monotonic() + 600
    while run.engine.snapshot().queued_frames and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    finals = [await ask(run.engine, 100 + i) for i in range(questions)]
    ttfts = [t for t in (first_token_s(f) for f in finals) if t is not None]
    return {
        "ttft_s": ttfts,
        "ttft_median_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p95_s": p95(ttfts),
    }


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
            seen = run.counts()[0] > 0  # a question before the first block is refused
            if pending is None and ask_at and seen and time.monotonic() - began >= ask_at[0]:
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
        "ttft_p95_s": p95(ttfts),
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
    model: VideoLLM, name: str, mode: str, args: argparse.Namespace, clip: str, path: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "mode": mode, "clip": clip}
    async with Run(model, mode, args, path) as run:
        row["live"] = await live(run, args.fps, args.seconds, args.questions)
        row.update(run.compression())
        if args.idle_questions:
            row["idle"] = await idle_ttft(run, args.idle_questions)
    frames = row["live"]["frames_encoded"]
    row["vision_ms_per_frame"] = 1000 * row["vision_s"] / frames if frames else None
    row["prefill_ms_per_frame"] = 1000 * row["prefill_s"] / frames if frames else None
    covered = max(1, frames) / args.fps  # seconds of video the memory holds
    row["disk_bytes_per_hour"] = row["disk_bytes"] * 3600 / covered
    # frames per second of engine-thread time in the chain and the memory (what the engine can
    # keep up with on this clip, from the live run itself)
    busy = row["vision_s"] + row["prefill_s"]
    row["capacity_fps"] = frames / busy if busy > 0 else None
    if args.saturation_seconds > 0:
        async with Run(model, mode, args, path) as run:
            row["saturation"] = await saturation(run, args.saturation_fps, args.saturation_seconds)
    else:
        row["saturation"] = {"encoded_per_s": None}
    ceiling = row["saturation"]["encoded_per_s"]
    if not args.no_confirm and ceiling:
        # a live replay cannot deliver more frames per second than the clip has
        rate = round(min(0.9 * ceiling, clip_fps()), 3)
        async with Run(model, mode, args, path) as run:
            confirm = await live(run, rate, args.confirm_seconds, 0)
        row["confirm"] = confirm
    return row


@cache
def clip_fps() -> float:
    return probe_source_sync(str(CLIP)).fps or 10.0


def build(name: str, mode: str, args: argparse.Namespace) -> VideoLLM:
    model = build_test_adapter(
        "llava_onevision", realistic=name == "realistic", device=args.device, dtype="float32"
    )
    if mode == "levers" and args.device == "cpu":
        quantize_model(model, ("vision", "llm"))
    return model


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


async def main_async(args: argparse.Namespace, clips: dict[str, Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in args.models:
        for mode in args.modes:  # a model per way: int8 changes it in place
            began = time.perf_counter()
            model = build(name, mode, args)
            took = time.perf_counter() - began
            print(f"built the {name} model for {mode} in {took:.1f} s", file=sys.stderr)
            try:
                for clip, path in clips.items():
                    print(f"  {name} / {mode} / {clip} ...", file=sys.stderr)
                    rows.append(await bench_mode(model, name, mode, args, clip, path))
                    print("  " + json.dumps(summary(rows[-1])), file=sys.stderr)
            finally:
                del model
                gc.collect()
    return rows


def summary(r: dict[str, Any]) -> dict[str, Any]:
    live_ = r["live"]
    return {
        "model": r["model"],
        "way": r["mode"],
        "clip": r["clip"],
        "encoded": live_["frames_encoded"],
        "shed": live_["frames_dropped"],
        "gated_share": r.get("gated_share"),
        "vision_ms": r.get("vision_ms_per_frame"),
        "prefill_ms": r.get("prefill_ms_per_frame"),
        "ttft_median_s": live_["ttft_median_s"],
        "ttft_p95_s": live_["ttft_p95_s"],
        "idle_ttft_median_s": r.get("idle", {}).get("ttft_median_s"),
        "sustained_fps": r["saturation"]["encoded_per_s"],
        "capacity_fps": r.get("capacity_fps"),
        "disk_gb_per_hour": r["disk_bytes_per_hour"] / 1e9,
    }


def levers_table(rows: list[dict[str, Any]]) -> str:
    """Issue 16's table: per clip and way, and the levers' ratios to uncompressed."""
    head = (
        "| model | clip | way | encoded / shed | gated | vision ms/frame | prefill ms/frame | "
        "TTFT median / p95 flowing (s) | TTFT median idle (s) | sustained fps | "
        "capacity fps | disk GB/h |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        s = summary(r)
        lines.append(
            f"| {s['model']} | {s['clip']} | {s['way']} | {s['encoded']} / {s['shed']} | "
            f"{fmt(s['gated_share'])} | {fmt(s['vision_ms'], 0)} | {fmt(s['prefill_ms'], 0)} | "
            f"{fmt(s['ttft_median_s'])} / {fmt(s['ttft_p95_s'])} | "
            f"{fmt(s['idle_ttft_median_s'])} | {fmt(s['sustained_fps'], 3)} | "
            f"{fmt(s['capacity_fps'], 3)} | "
            f"{fmt(s['disk_gb_per_hour'], 3)} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,realistic", type=lambda s: s.split(","))
    parser.add_argument("--modes", default="uncompressed,stc", type=lambda s: s.split(","))
    parser.add_argument("--clips", default="shared", type=lambda s: s.split(","))
    parser.add_argument("--pan-px", type=float, default=16.0, help="pan speed, px per second")
    parser.add_argument(
        "--idle-questions", type=int, default=0, help="questions after the feed stopped"
    )
    parser.add_argument("--fps", type=float, default=1.0, help="live sampling rate")
    parser.add_argument("--seconds", type=float, default=30.0, help="live run length")
    parser.add_argument("--questions", type=int, default=3, help="questions per live run")
    parser.add_argument(
        "--answer-tokens", type=int, default=1, help="max_new_tokens (1: TTFT = answer time)"
    )
    parser.add_argument(
        "--batch", type=int, default=4, help="engine.max_batch_frames (the daemon's default: 4)"
    )
    parser.add_argument(
        "--frame-queue", type=int, default=8, help="engine.frame_queue_per_camera (default 8)"
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
        if mode not in MODES:
            parser.error(f"unknown way {mode!r}; use {', '.join(MODES)}")
    for clip in args.clips:
        if clip not in CLIPS:
            parser.error(f"unknown clip {clip!r}; use {', '.join(CLIPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not CLIP.is_file():
        print(f"the shared clip is absent ({CLIP})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-daemon-clips-") as folder:
        clips = {c: derived_clip(c, Path(folder), args.pan_px) for c in args.clips}
        rows = asyncio.run(main_async(args, clips))
    print(table(rows))
    print()
    print(levers_table(rows))
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
