"""Benchmark of the KV memory on a realistic-shape LLaVA-OneVision-0.5B LLM (random weights, fp32).

A stream at ``--fps`` frames per second of ``--tokens`` visual tokens each (pruned frames) is fed
as fast as the machine allows (random visual-token tensors: no vision tower), and at each
checkpoint (``--minutes``, minutes of stream) a question is asked. Three ways are compared in
the same run:

- ``memory``: the ReKV memory (sliding-window encoding, blocks to RAM and disk, per-layer top-k
  retrieval plus the recent blocks);
- ``full-kv``: the naive keep-everything way: every frame is prefilled into one growing KV cache in
  RAM with full attention, and the question is prefilled over all of it;
- ``reencode``: the other naive way: keep only the last ``--reencode-frames`` frames' visual
  tokens, and prefill them (with the prompt) from scratch for every question.

Reported per checkpoint: time to first token, peak resident memory, bytes on disk, and the
per-frame encode cost (mean of the last ``--window-avg`` frames; the first frames' cost is the
"start" column). 60 minutes at 1 fps is 3600 frames: measure a short run first and extrapolate
from its per-frame cost before asking for that (``--minutes 1 10 60``).

    .venv/bin/python bench/bench_memory.py --minutes 1 2 --window-tokens 2048

``--rss`` is the resident-size check: the memory way only, at 10 and 60 minutes (unless
``--minutes`` says otherwise), printing the resident size right after each checkpoint's
question, the memory's own RAM (retrieval rows, RAM tier, window) and the ratio of the last to
the first (target: within 5%). What grows with the stream is per block (the index's rows, the
block records), not per token, and the RAM tier and the window are bounded by their budgets,
so fewer tokens per frame, a smaller window and a RAM budget that fills before the first
checkpoint measure the same growth in a fraction of the time. ``--mlp-width`` narrows each
decoder layer's MLP (random weights either way): the per-frame cost drops several times (a few
tokens per frame make the LLM's weight reads the cost), while everything the memory keeps per
block (layers, KV heads, head dim, hidden size) stays the realistic model's; the resident size
then has a smaller constant part, which makes the 5% test stricter, not looser:

    .venv/bin/python bench/bench_memory.py --rss --tokens 4 --window-tokens 256 \
        --ram-budget-mb 16 --no-fsync --repeats 1 --new-tokens 2 --mlp-width 256 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream_agent.memory import AnswerFinal, FrameStamp, Memory, MemoryOptions  # noqa: E402
from stream_agent.memory.heap import release_free_memory  # noqa: E402
from stream_agent.models.base import VideoLLM  # noqa: E402
from stream_agent.models.records import DecodeOptions, LMChunk, VisualTokens  # noqa: E402
from stream_agent.models.testing import build_test_adapter  # noqa: E402

QUESTION = "What is the person at the door doing right now?"
WALL0 = 1_700_000_000.0


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident memory (``VmRSS``) or its peak since the last reset (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (``VmHWM``) at the current RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@dataclass
class Checkpoint:
    way: str
    minutes: float
    frames: int
    ttft_s: float
    answer_s: float
    peak_rss_mb: float
    rss_mb: float
    disk_mb: float
    encode_ms_start: float
    encode_ms_now: float
    context_tokens: int
    blocks: int = 0
    index_ram_mb: float = 0.0
    ram_tier_mb: float = 0.0
    memory_ram_mb: float = 0.0
    index_reads: int = 0


class Stream:
    """Random visual tokens of one frame each (a square grid of ``tokens``, as a pruner would
    leave them), deterministic per frame index."""

    def __init__(self, model: VideoLLM, tokens: int) -> None:
        self.model = model
        side = int(tokens**0.5)
        if side * side != tokens:
            raise SystemExit("--tokens must be a square number (a token grid)")
        self.grid = (side, side)
        self.dim = model.lm_spec.hidden_size

    def tokens(self, index: int) -> VisualTokens:
        gen = torch.Generator().manual_seed(index)
        embeds = torch.randn(self.grid[0] * self.grid[1], self.dim, generator=gen) * 0.02
        return VisualTokens(embeds=embeds.to(self.model.dtype), grid=self.grid)

    def chunk(self, index: int, start: int) -> LMChunk:
        """Frame ``index`` as step ``index`` of the video, laid out from ``start``."""
        return self.model.video_step_chunk(
            self.tokens(index), start, step=index, timestamp=float(index)
        )


def ask_memory(
    memory: Memory, new_tokens: int, repeats: int
) -> tuple[float, float, int, AnswerFinal]:
    """Median TTFT and answer time over ``repeats`` askings, the context size, the last answer."""
    ttfts, totals = [], []
    context = 0
    final = None
    for _ in range(repeats):
        began = time.perf_counter()
        final = None
        for event in memory.answer(QUESTION, options=DecodeOptions(max_new_tokens=new_tokens)):
            if isinstance(event, AnswerFinal):
                final = event
        assert final is not None
        ttfts.append(final.timings.ttft_s or 0.0)
        totals.append(time.perf_counter() - began)
        context = final.timings.context_tokens
    assert final is not None
    return statistics.median(ttfts), statistics.median(totals), context, final


def memory_figures(memory: Memory, final: AnswerFinal) -> dict[str, Any]:
    """The memory's own RAM, by part, and the answer's index reads."""
    index = sum(memory.tiers.index_bytes(s) for s in memory.tiers.streams.values())
    return {
        "blocks": sum(len(s.blocks) for s in memory.tiers.streams.values()),
        "index_ram_mb": index / 1024**2,
        "ram_tier_mb": memory.ram.nbytes / 1024**2,
        "memory_ram_mb": memory.ram_bytes / 1024**2,
        "index_reads": final.timings.index_reads,
    }


def run_memory(model: VideoLLM, args: argparse.Namespace, store: Path) -> list[Checkpoint]:
    options = MemoryOptions(
        store_dir=store,
        window_tokens=args.window_tokens,
        top_k=args.top_k,
        recent_blocks=args.recent_blocks,
        ram_budget_bytes=int(args.ram_budget_mb * 1024**2),
        index_ram_blocks=args.index_ram_blocks,
        disk_budget_bytes=int(args.disk_budget_gb * 1024**3),
        fsync=not args.no_fsync,
    )
    stream = Stream(model, args.tokens)
    out: list[Checkpoint] = []
    reset_peak_rss()
    with Memory(model, options) as memory:

        def ask(frames: int, start_ms: float, now_ms: float) -> None:
            ttft, answer_s, context, final = ask_memory(memory, args.new_tokens, args.repeats)
            extra = memory_figures(memory, final)
            del final
            out.append(
                checkpoint(
                    "memory",
                    frames,
                    args,
                    start_ms,
                    now_ms,
                    ttft,
                    answer_s,
                    context,
                    disk=memory.disk_bytes,
                    extra=extra,
                )
            )

        feed_checkpoints(
            args,
            lambda i: memory.append_step(
                "cam",
                stream.tokens(i),
                FrameStamp(i, i / args.fps, WALL0 + i / args.fps),
                seconds_per_step=1 / args.fps,
            ),
            ask,
        )
    return out


def feed_checkpoints(
    args: argparse.Namespace,
    encode: Callable[[int], Any],
    at_checkpoint: Callable[[int, float, float], None],
) -> list[float]:
    marks = sorted({max(1, round(m * 60 * args.fps)) for m in args.minutes})
    times: list[float] = []
    frame = 0
    for mark in marks:
        while frame < mark:
            began = time.perf_counter()
            encode(frame)
            times.append(time.perf_counter() - began)
            frame += 1
            if frame % 100 == 0:
                print(f"    frame {frame}: {1000 * times[-1]:.0f} ms", flush=True)
        avg = min(args.window_avg, len(times))
        # the first frame pays one-off costs (allocation); the start column skips it
        start = times[1 : 1 + avg] or times[:1]
        at_checkpoint(frame, 1000 * statistics.mean(start), 1000 * statistics.mean(times[-avg:]))
    return times


def checkpoint(
    way: str,
    frames: int,
    args: argparse.Namespace,
    start_ms: float,
    now_ms: float,
    ttft: float,
    answer_s: float,
    context: int,
    *,
    disk: int,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    # the resident size right after the question (the answer freed its contexts and handed
    # the pages back), before anything else is allocated
    rss_now = rss_bytes() / 1024**2
    point = Checkpoint(
        way=way,
        minutes=frames / args.fps / 60,
        frames=frames,
        ttft_s=ttft,
        answer_s=answer_s,
        peak_rss_mb=rss_bytes("VmHWM") / 1024**2,
        rss_mb=rss_now,
        disk_mb=disk / 1024**2,
        encode_ms_start=start_ms,
        encode_ms_now=now_ms,
        context_tokens=context,
        **(extra or {}),
    )
    print(
        f"  {way:9s} {point.minutes:6.2f} min: TTFT {ttft:.2f} s, RSS {point.rss_mb:.0f} MB, "
        f"encode {now_ms:.0f} ms/frame",
        flush=True,
    )
    return point


@torch.no_grad()
def run_full_kv(model: VideoLLM, args: argparse.Namespace) -> list[Checkpoint]:
    """Keep every frame's KV in one cache with full attention; prefill the question over it."""
    stream = Stream(model, args.tokens)
    layout = model.build_prompt(QUESTION)
    cache = model.new_cache()
    prefix = model.text_chunk(layout.prefix_ids, 0)
    model.prefill(cache, prefix)
    state = {"position": prefix.next_position}
    out: list[Checkpoint] = []
    reset_peak_rss()

    def encode(i: int) -> None:
        chunk = stream.chunk(i, state["position"])
        model.prefill(cache, chunk)
        state["position"] = chunk.next_position

    def ask(frames: int, start_ms: float, now_ms: float) -> None:
        # the question's KV must not stay: answer on a copy of the cache
        began = time.perf_counter()
        own = model.new_cache()
        for i, layer in enumerate(cache.layers):
            own.update(layer.keys.clone(), layer.values.clone(), i)
        position = state["position"]
        end = model.video_end_chunk(position)
        model.prefill(own, end)
        suffix = model.text_chunk(layout.suffix_ids, end.next_position)
        logits = model.prefill(own, suffix, want_logits=True)
        assert logits is not None
        ttft = 0.0
        for n, _ in enumerate(
            model.decode(
                own, logits, suffix.next_position, DecodeOptions(max_new_tokens=args.new_tokens)
            )
        ):
            if n == 0:
                ttft = time.perf_counter() - began
        out.append(
            checkpoint(
                "full-kv",
                frames,
                args,
                start_ms,
                now_ms,
                ttft,
                time.perf_counter() - began,
                position,
                disk=0,
            )
        )
        del own

    feed_checkpoints(args, encode, ask)
    return out


@torch.no_grad()
def run_reencode(model: VideoLLM, args: argparse.Namespace) -> list[Checkpoint]:
    """Keep the last N frames' visual tokens; prefill them and the question for every question."""
    stream = Stream(model, args.tokens)
    layout = model.build_prompt(QUESTION)
    kept: list[int] = []
    out: list[Checkpoint] = []
    reset_peak_rss()

    def encode(i: int) -> None:
        kept.append(i)
        del kept[: -args.reencode_frames]

    def ask(frames: int, start_ms: float, now_ms: float) -> None:
        began = time.perf_counter()
        cache = model.new_cache()
        chunks = [model.text_chunk(layout.prefix_ids, 0)]
        for step, i in enumerate(kept):
            chunks.append(
                model.video_step_chunk(
                    stream.tokens(i), chunks[-1].next_position, step=step, timestamp=float(i)
                )
            )
        chunks.append(model.video_end_chunk(chunks[-1].next_position))
        chunks.append(model.text_chunk(layout.suffix_ids, chunks[-1].next_position))
        prompt = LMChunk.concat([c for c in chunks if len(c)])
        logits = model.prefill(cache, prompt, want_logits=True)
        assert logits is not None
        ttft = 0.0
        for n, _ in enumerate(
            model.decode(
                cache, logits, prompt.next_position, DecodeOptions(max_new_tokens=args.new_tokens)
            )
        ):
            if n == 0:
                ttft = time.perf_counter() - began
        out.append(
            checkpoint(
                "reencode",
                frames,
                args,
                start_ms,
                now_ms,
                ttft,
                time.perf_counter() - began,
                len(prompt),
                disk=0,
            )
        )

    feed_checkpoints(args, encode, ask)
    return out


def narrow_mlp(model: VideoLLM, width: int) -> None:
    """Keep the first ``width`` units of every decoder layer's MLP (see the module docstring)."""
    for layer in model.decoder.layers:
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, width, bias=False, dtype=old.weight.dtype)
            new.weight.data = old.weight.data[:width].clone()
            setattr(mlp, name, new)
        old = mlp.down_proj
        new = torch.nn.Linear(width, old.out_features, bias=False, dtype=old.weight.dtype)
        new.weight.data = old.weight.data[:, :width].clone()
        mlp.down_proj = new
        mlp.intermediate_size = width
    release_free_memory()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--tokens", type=int, default=64, help="visual tokens per frame")
    parser.add_argument("--window-tokens", type=int, default=15_000)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--recent-blocks", type=int, default=4)
    parser.add_argument("--ram-budget-mb", type=float, default=2048)
    parser.add_argument(
        "--mlp-width", type=int, default=None, help="narrow each LLM layer's MLP (--rss runs)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--index-ram-blocks",
        type=int,
        default=next(f.default for f in fields(MemoryOptions) if f.name == "index_ram_blocks"),
        help="newest blocks per stream whose retrieval rows stay in RAM",
    )
    parser.add_argument(
        "--rss",
        action="store_true",
        help="resident-size check: the memory way at 10 and 60 minutes, RSS after each question",
    )
    parser.add_argument("--disk-budget-gb", type=float, default=20)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--new-tokens", type=int, default=4, help="answer tokens per question")
    parser.add_argument("--repeats", type=int, default=3, help="askings per checkpoint (median)")
    parser.add_argument("--reencode-frames", type=int, default=68)
    parser.add_argument("--window-avg", type=int, default=10, help="frames averaged per cost")
    parser.add_argument("--ways", nargs="+", default=["memory", "full-kv", "reencode"])
    parser.add_argument("--store", type=Path, default=None, help="store folder (default: temp)")
    parser.add_argument("--tiny", action="store_true", help="tiny model (validates the script)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/bench_memory.json")
    args = parser.parse_args()
    if args.rss:
        if args.minutes == parser.get_default("minutes"):
            args.minutes = [10.0, 60.0]
        args.ways = ["memory"]
        if args.json == parser.get_default("json"):
            args.json = ROOT / "bench/results/bench_memory_rss.json"

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    model = build_test_adapter("llava_onevision", realistic=not args.tiny, dtype="float32")
    if args.mlp_width:
        narrow_mlp(model, args.mlp_width)
    print(
        f"model built in {time.perf_counter() - began:.1f} s; {torch.get_num_threads()} threads; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: list[Checkpoint] = []
    store = args.store or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        for way in args.ways:
            print(f"{way}:", flush=True)
            if way == "memory":
                results += run_memory(model, args, store)
            elif way == "full-kv":
                results += run_full_kv(model, args)
            elif way == "reencode":
                results += run_reencode(model, args)
            else:
                parser.error(f"unknown way {way!r}")
    finally:
        if args.store is None:
            shutil.rmtree(store, ignore_errors=True)

    header = (
        f"{'way':9s} {'min':>6s} {'frames':>6s} {'TTFT s':>7s} {'answer s':>8s} "
        f"{'ctx tok':>7s} {'peak RSS MB':>11s} {'disk MB':>8s} {'enc ms start':>12s} "
        f"{'enc ms now':>10s}"
    )
    print("\n" + header)
    for p in results:
        print(
            f"{p.way:9s} {p.minutes:6.2f} {p.frames:6d} {p.ttft_s:7.2f} {p.answer_s:8.2f} "
            f"{p.context_tokens:7d} {p.peak_rss_mb:11.0f} {p.disk_mb:8.1f} "
            f"{p.encode_ms_start:12.0f} {p.encode_ms_now:10.0f}"
        )
    memory_points = [p for p in results if p.way == "memory"]
    summary: dict[str, Any] = {}
    if args.rss and memory_points:
        print(
            f"\n{'min':>6s} {'blocks':>6s} {'RSS after question MB':>21s} {'index RAM MB':>12s} "
            f"{'RAM tier MB':>11s} {'memory RAM MB':>13s} {'index reads':>11s}"
        )
        for p in memory_points:
            print(
                f"{p.minutes:6.1f} {p.blocks:6d} {p.rss_mb:21.1f} {p.index_ram_mb:12.2f} "
                f"{p.ram_tier_mb:11.1f} {p.memory_ram_mb:13.1f} {p.index_reads:11d}"
            )
        first, last = memory_points[0], memory_points[-1]
        ratio = last.rss_mb / first.rss_mb
        summary["rss_ratio_last_vs_first"] = ratio
        summary["rss_within_5_percent"] = abs(ratio - 1) <= 0.05
        print(
            f"\nRSS after the question at {last.minutes:g} min is {ratio:.4f}x the RSS at "
            f"{first.minutes:g} min ({last.rss_mb - first.rss_mb:+.1f} MB; target within 5%: "
            f"{'met' if summary['rss_within_5_percent'] else 'NOT met'})"
        )
    if len(memory_points) >= 2:
        first, last = memory_points[0], memory_points[-1]
        hours = last.frames / args.fps / 3600
        summary |= {
            "ttft_ratio_last_vs_first": last.ttft_s / first.ttft_s,
            "encode_ratio_last_vs_start": last.encode_ms_now / last.encode_ms_start,
            "rss_growth_mb": last.peak_rss_mb - first.peak_rss_mb,
            "disk_mb_per_hour": last.disk_mb / hours,
            "projected_hours_for_60_min": 3600 * args.fps * last.encode_ms_now / 1000 / 3600,
        }
        print(
            "\nmemory: TTFT {:.2f}x from first to last checkpoint, encode cost {:.2f}x start, "
            "RSS +{:.0f} MB, {:.0f} MB disk per hour of stream; 60 min of stream would take "
            "{:.1f} h to encode here".format(
                summary["ttft_ratio_last_vs_first"],
                summary["encode_ratio_last_vs_start"],
                summary["rss_growth_mb"],
                summary["disk_mb_per_hour"],
                summary["projected_hours_for_60_min"],
            )
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "load_average": os.getloadavg(),
                "threads": torch.get_num_threads(),
                "checkpoints": [asdict(p) for p in results],
                "summary": summary,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
