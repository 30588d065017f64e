"""Benchmark the model runtime per family at realistic shapes: the baseline for every speed-up.

For each family whose realistic-shape test checkpoint can be built
(``build_test_adapter(family, realistic=True)``: real layer counts and widths, random weights,
fp32), on the device given (CPU by default):

* **vision ms/frame**: the adapter's layer-by-layer vision path (``encode_pixels``: patch
  embedding, encoder layers as :mod:`cacher.layers` records, the family's projector and
  pooling/merging) against the library's own vision forward on the same pixels where the family
  has one wired here (LLaVA-OneVision ``get_video_features``, SmolVLM ``get_image_features``); the
  ratio ours / library should stay near 1. Preprocessing (numpy/PIL, 768x432 frames) is timed
  apart.
* **prefill tokens/s**: one frame's tokens (with the family's per-frame text, if any) appended in
  one call to a cache already holding the prompt prefix and ``--context-frames`` frames.
* **decode tokens/s**: greedy decoding of ``--decode-tokens`` tokens after the question; each
  token after the first is one LLM step, so the rate is (tokens - 1) / time.
* **KV bytes per token** (keys + values, all layers) and per frame, and the parameter count.

Each measure runs ``--repeats`` times after one warm-up and the median counts (the JSON keeps
every run); the two vision ways run interleaved. Each model is built once and freed before the
next. Families that cannot be built (not written yet, or failing) get a "not available" row with
the reason.

Prints a table and writes ``bench/results/models.json``. Run from the repository root:

    .venv/bin/python bench/bench_models.py [--families llava_onevision,smolvlm] [--frames 2]
        [--repeats 3] [--context-frames 4] [--decode-tokens 8] [--device cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from stream_agent.models import DecodeOptions, LMChunk, VideoLLM, VisualTokens
from stream_agent.models.testing import BUILDERS, build_test_adapter

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "models.json"
QUESTION = "What did the person at the table do in the last minute?"
FRAME_SHAPE = (432, 768)  # the shared test clip's frame size


def library_vision(model: VideoLLM) -> Callable[[torch.Tensor], Any] | None:
    """The library's own vision forward (tower + projector + pooling) for ``model``'s family."""
    inner = model.model.model
    if model.family == "llava_onevision":
        return lambda pixels: inner.get_video_features(pixels[None])
    if model.family == "smolvlm":
        return lambda pixels: inner.get_image_features(pixels[None])
    return None


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds per call of ``fn``, ``repeats`` times."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return runs


def frame_chunk(model: VideoLLM, step: VisualTokens, start: int, timestamp: float) -> LMChunk:
    """One step's visual tokens with the family's text around them, as one chunk."""
    opening = model.frame_open_chunk(start, timestamp=timestamp)
    visual = model.visual_chunk(step, opening.next_position)
    closing = model.frame_close_chunk(visual.next_position)
    return LMChunk.concat([c for c in (opening, visual, closing) if len(c)])


def bench_family(family: str, args: argparse.Namespace) -> dict[str, Any]:
    """All measures of one family; raises if its realistic checkpoint cannot be built."""
    start = time.perf_counter()
    model = build_test_adapter(family, realistic=not args.tiny, device=args.device, dtype="float32")
    build_s = time.perf_counter() - start
    try:
        return measure(model, args) | {"build_s": build_s}
    finally:
        del model
        gc.collect()


def measure(model: VideoLLM, args: argparse.Namespace) -> dict[str, Any]:
    vision, lm = model.vision_spec, model.lm_spec
    per_step = vision.frames_per_step
    count = max(per_step, -(-args.frames // per_step) * per_step)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (*FRAME_SHAPE, 3), dtype=np.uint8) for _ in range(count)]

    prep_runs = timed(lambda: model.preprocess(frames), args.repeats)
    pixels = model.preprocess(frames)
    with torch.no_grad():
        step = model.encode_pixels(pixels[:per_step])[0]  # also the warm-up
        library = library_vision(model)
        ways: list[Callable[[], Any]] = [lambda: model.encode_pixels(pixels)]
        if library is not None:
            ways.append(lambda: library(pixels))
        runs: list[list[float]] = [[] for _ in ways]
        for repeat in range(args.repeats):
            # interleaved, the order alternating, so that load changes hit both ways alike
            order = range(len(ways)) if repeat % 2 == 0 else reversed(range(len(ways)))
            for i in order:
                runs[i] += timed(ways[i], 1)
        ours_runs, library_runs = runs[0], (runs[1] if library is not None else [])

    # The cache a new frame is appended to: prompt prefix + context frames.
    layout = model.build_prompt(QUESTION)
    cache = model.new_cache()
    prefix = model.text_chunk(layout.prefix_ids, 0)
    model.prefill(cache, prefix)
    position = prefix.next_position
    for i in range(args.context_frames):
        chunk = frame_chunk(model, step, position, float(i * per_step))
        model.prefill(cache, chunk)
        position = chunk.next_position
    context_tokens = cache.get_seq_length()
    new_frame = frame_chunk(model, step, position, float(args.context_frames * per_step))
    model.prefill(copy.deepcopy(cache), new_frame)  # warm-up at this length
    prefill_runs: list[float] = []
    for _ in range(args.repeats):
        working = copy.deepcopy(cache)  # the copy is not timed
        start = time.perf_counter()
        model.prefill(working, new_frame)
        prefill_runs.append(time.perf_counter() - start)

    # Decode after the new frame and the question.
    model.prefill(cache, new_frame)
    end = model.video_end_chunk(new_frame.next_position)
    if len(end):
        model.prefill(cache, end)
    suffix = model.text_chunk(layout.suffix_ids, end.next_position)
    logits = model.prefill(cache, suffix, want_logits=True)
    assert logits is not None
    decode_context = cache.get_seq_length()
    options = DecodeOptions(max_new_tokens=args.decode_tokens, stop_ids=())
    decode_runs: list[float] = []
    for _ in range(args.repeats):
        working = copy.deepcopy(cache)
        start = time.perf_counter()
        steps = list(model.decode(working, logits, suffix.next_position, options))
        decode_runs.append(time.perf_counter() - start)
        assert len(steps) == args.decode_tokens

    ours = statistics.median(ours_runs) / count
    lib = statistics.median(library_runs) / count if library_runs else None
    frame_tokens = len(new_frame) / per_step
    return {
        "family": model.family,
        "available": True,
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "vision": {
            "image_size": list(vision.image_size),
            "layers": vision.num_layers,
            "hidden_size": vision.hidden_size,
            "patches_per_frame": vision.patches_per_frame,
            "frames_per_step": per_step,
        },
        "llm": {
            "layers": lm.num_layers,
            "hidden_size": lm.hidden_size,
            "heads": lm.num_heads,
            "kv_heads": lm.num_kv_heads,
            "head_dim": lm.head_dim,
            "rope": lm.rope,
        },
        "frames": count,
        "visual_tokens_per_frame": vision.tokens_per_step / per_step,
        "llm_tokens_per_frame": frame_tokens,
        "preprocess_ms_per_frame": statistics.median(prep_runs) / count * 1e3,
        "vision_ms_per_frame": ours * 1e3,
        "library_vision_ms_per_frame": lib * 1e3 if lib is not None else None,
        "vision_ratio_ours_to_library": ours / lib if lib else None,
        "prefill_tokens": len(new_frame),
        "prefill_context_tokens": context_tokens,
        "prefill_tokens_per_s": len(new_frame) / statistics.median(prefill_runs),
        "decode_context_tokens": decode_context,
        "decode_tokens": args.decode_tokens,
        "decode_tokens_per_s": (args.decode_tokens - 1) / statistics.median(decode_runs),
        "kv_bytes_per_token": lm.kv_bytes_per_token,
        "kv_bytes_per_frame": lm.kv_bytes_per_token * frame_tokens,
        "runs_s": {
            "preprocess": prep_runs,
            "vision": ours_runs,
            "library_vision": library_runs,
            "prefill": prefill_runs,
            "decode": decode_runs,
        },
    }


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        "family",
        "params M",
        "prep ms/f",
        "vision ms/f",
        "library ms/f",
        "ours/lib",
        "tok/frame",
        "prefill tok/s",
        "decode tok/s",
        "KV KiB/tok",
        "KV MiB/frame",
    )
    print(
        "{:<16} {:>9} {:>10} {:>12} {:>13} {:>9} {:>10} {:>14} {:>13} {:>11} {:>13}".format(*header)
    )
    for r in rows:
        if not r["available"]:
            print(f"{r['family']:<16} not available: {r['reason']}")
            continue
        print(
            f"{r['family']:<16} {r['parameters'] / 1e6:>9.1f} "
            f"{r['preprocess_ms_per_frame']:>10.1f} {r['vision_ms_per_frame']:>12.0f} "
            f"{_num(r['library_vision_ms_per_frame'], '.0f'):>13} "
            f"{_num(r['vision_ratio_ours_to_library'], '.3f'):>9} "
            f"{r['llm_tokens_per_frame']:>10.0f} {r['prefill_tokens_per_s']:>14.1f} "
            f"{r['decode_tokens_per_s']:>13.2f} {r['kv_bytes_per_token'] / 1024:>11.1f} "
            f"{r['kv_bytes_per_frame'] / 2**20:>13.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--families",
        default=",".join(BUILDERS),
        help=f"comma-separated families (default: all, {','.join(BUILDERS)})",
    )
    parser.add_argument("--frames", type=int, default=2, help="frames per vision call")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measure")
    parser.add_argument("--context-frames", type=int, default=4, help="frames already cached")
    parser.add_argument("--decode-tokens", type=int, default=8, help="tokens decoded (>= 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny test checkpoints (to check this script)"
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"output (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1 or args.context_frames < 0 or args.decode_tokens < 2:
        parser.error("--frames and --repeats must be >= 1, --decode-tokens >= 2")
    families = [f.strip() for f in args.families.split(",") if f.strip()]

    rows: list[dict[str, Any]] = []
    for family in families:
        shapes = "tiny" if args.tiny else "realistic-shape"
        print(f"{family}: building the {shapes} checkpoint ...", file=sys.stderr, flush=True)
        try:
            row = bench_family(family, args)
        except Exception as exc:  # a family not written yet, or failing: report, go on
            row = {"family": family, "available": False, "reason": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        print(f"{family}: done", file=sys.stderr, flush=True)

    print()
    print_table(rows)
    print(
        f"\n{'TINY test checkpoints, ' if args.tiny else ''}fp32, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, "
        f"{args.frames} frame(s) per vision call, {args.repeats} repeat(s), median; prefill = one "
        f"frame onto prefix + {args.context_frames} frames; decode = {args.decode_tokens} tokens"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": {
                    "python": platform.python_version(),
                    "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "device": args.device,
                },
                "settings": {
                    "frames": args.frames,
                    "repeats": args.repeats,
                    "context_frames": args.context_frames,
                    "decode_tokens": args.decode_tokens,
                    "frame_shape": list(FRAME_SHAPE),
                    "dtype": "float32",
                    "shapes": "tiny" if args.tiny else "realistic",
                },
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
