"""Benchmark: the change gate (``cacher.gate``) in front of the adaptive cacher, tuned together.

Two parts, one run:

1. **Gate tuning** (numpy only, every frame of every clip): for a grid of ``cell_threshold`` x
   ``changed_share`` (the gate's two thresholds), the share of frames gated and the frames with
   motion that were gated anyway ("missed": on the shared clip, a frame whose 16x9 cell grid has
   a cell whose mean luma moved by more than 40 levels against the previous second -- someone
   walking in or out; on the generated clips the frames the clip's script changes).
2. **Gate + adaptive cacher** (the default gate, SigLIP-base 224/16 with random weights by
   default, ``--encoder so400m`` for LLaVA-OV's tower): each frame runs the full encode (the
   reference for fidelity) and, when the gate passes it, the adaptive cacher (a stream cacher that
   sees only passed frames, as the daemon will). Reported: gated share; for passed frames the
   cacher's recomputed share and kinds and the final-token cosine to the full encode; for gated
   frames the cosine of what the memory keeps for them (the last passed frame's tokens) to their
   own full encode -- what gating costs; and encoder ms per frame: full vs cacher alone (all
   frames) vs gate + cacher.

Clips (1 fps): ``shared`` (the shared clip), ``pan`` (a square crop panned across it, 24 px a
frame), ``static`` (its first frame repeated with Gaussian sensor noise sigma 4), ``cut`` (the
first frame, then a frame 60 s later, each held with noise), ``drift`` (the first frame
brightening by 0.4 levels a frame), ``enter`` (the first frame with a small figure walking in
from the left and stopping).

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/bench_gate.py [--frames 60] [--clip-frames 20]
[--encoder base] [--threads 1] [--json bench/results/gate.json]``. ``--no-encode`` runs only
the tuning part (seconds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_cacher import (  # noqa: E402
    BUILDERS,
    DEFAULT_CLIP,
    Encoder,
    pan_clip,
    sample_clip,
    token_cosines,
)
from cacher import (  # noqa: E402
    AdaptiveOptions,
    CacherConfig,
    ChangeGate,
    GateConfig,
    StreamCacher,
)
from cacher.gate import small_luma  # noqa: E402
from cacher.layers import encoder_forward  # noqa: E402

DEFAULT_JSON = ROOT / "bench" / "results" / "gate.json"
Frame = npt.NDArray[np.uint8]
THRESHOLDS = (6.0, 8.0, 12.0, 16.0, 24.0)
#: Adaptive-cacher settings compared behind the default gate.
CACHERS: dict[str, CacherConfig] = {
    "adaptive": CacherConfig(),
    "adapt_r50": CacherConfig(adaptive=AdaptiveOptions(max_ratio=0.5)),
    "adapt_r50_age10": CacherConfig(adaptive=AdaptiveOptions(max_ratio=0.5, max_age=10)),
}
SHARES = (0.005, 0.01, 0.02, 0.04)


# -------------------------------------------------------------------------------------- clips


def _noisy(img: npt.NDArray[np.float32], rng: np.random.Generator, sigma: float = 4.0) -> Frame:
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def make_clips(
    shared: Sequence[Frame], far: Frame, count: int
) -> dict[str, tuple[list[Frame], list[bool]]]:
    """Generated clips and, per frame, whether it changes (True) or not, by construction."""
    rng = np.random.default_rng(0)
    base = shared[0].astype(np.float32)
    clips: dict[str, tuple[list[Frame], list[bool]]] = {}
    clips["static"] = ([_noisy(base, rng) for _ in range(count)], [False] * count)
    half = count // 2
    cut = [_noisy(base, rng) for _ in range(half)] + [
        _noisy(far.astype(np.float32), rng) for _ in range(count - half)
    ]
    clips["cut"] = (cut, [i == half for i in range(count)])
    clips["drift"] = (
        [_noisy(base + 0.4 * i, rng) for i in range(count)],
        [False] * count,  # a lighting drift is no scene change (passes are refreshes)
    )
    height, width = base.shape[:2]
    fig_h, fig_w = height // 6, width // 24  # a small, distant figure: 1/144 of the frame
    stop = width // 3
    frames, changes = [], []
    x_prev: int | None = None
    for i in range(count):
        x = None if i < 3 else min((i - 3) * fig_w * 2, stop)
        img = base.copy()
        if x is not None:
            top = height // 2
            img[top : top + fig_h, x : x + fig_w] = (30.0, 30.0, 150.0)
        frames.append(_noisy(img, rng))
        changes.append(x != x_prev)
        x_prev = x
    clips["enter"] = (frames, changes)
    pan = pan_clip(list(shared[:count]), 24)
    clips["pan"] = (pan, [True] * count)
    return clips


def shared_truth(frames: Sequence[Frame]) -> list[bool]:
    """Frames with large motion against the previous second (see the module docstring)."""
    smalls = [small_luma(f, 64, 36) for f in frames]
    truth = [True]
    for a, b in itertools.pairwise(smalls):
        cells = np.abs(b - a).reshape(9, 4, 16, 4).mean(axis=(1, 3))
        truth.append(bool(cells.max() > 40))
    return truth


# -------------------------------------------------------------------------------------- tuning


def tune(clips: dict[str, tuple[list[Frame], list[bool]]]) -> list[dict[str, Any]]:
    rows = []
    for threshold in THRESHOLDS:
        for share in SHARES:
            config = GateConfig(cell_threshold=threshold, changed_share=share)
            row: dict[str, Any] = {"cell_threshold": threshold, "changed_share": share}
            for name, (frames, truth) in clips.items():
                gate = ChangeGate(config)
                passed = [gate.check(name, f, float(i)).passed for i, f in enumerate(frames)]
                missed = [
                    i for i, (p, t) in enumerate(zip(passed, truth, strict=True)) if t and not p
                ]
                row[name] = {"gated_share": gate.counters.gated_share, "missed": missed}
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------ gate + cacher


@torch.no_grad()
def encode_clip(
    encoder: Encoder, name: str, frames: Sequence[Frame], config: CacherConfig
) -> dict[str, Any]:
    gate = ChangeGate(GateConfig())
    gated_cacher = StreamCacher(encoder.layers, config, keep=encoder.keep)
    alone = StreamCacher(encoder.layers, config, keep=encoder.keep)
    ms: dict[str, list[float]] = {"full": [], "cacher": [], "gate+cacher": [], "gate": []}
    passed_cos: list[torch.Tensor] = []
    gated_cos: list[torch.Tensor] = []
    alone_cos: list[torch.Tensor] = []
    shares: list[float] = []
    kinds: dict[str, int] = {}
    last_tokens: torch.Tensor | None = None
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        decision = gate.check(name, frame, float(i))
        gate_ms = (time.perf_counter() - t0) * 1000
        ms["gate"].append(gate_ms)
        embeds = encoder.embed(frame)
        t0 = time.perf_counter()
        full = encoder.head(
            encoder_forward(encoder.layers, embeds, keep=encoder.keep).hidden_states
        )
        ms["full"].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        out = alone.encode(embeds)
        ms["cacher"].append((time.perf_counter() - t0) * 1000)
        alone_cos.append(token_cosines(encoder.head(out.hidden_states), full))
        if decision.passed:
            t0 = time.perf_counter()
            encoded = gated_cacher.encode(embeds)
            ms["gate+cacher"].append(gate_ms + (time.perf_counter() - t0) * 1000)
            last_tokens = encoder.head(encoded.hidden_states)
            passed_cos.append(token_cosines(last_tokens, full))
            shares.append(encoded.stats.recomputed_share)
            kinds[encoded.stats.kind] = kinds.get(encoded.stats.kind, 0) + 1
        else:
            ms["gate+cacher"].append(gate_ms)
            assert last_tokens is not None
            gated_cos.append(token_cosines(last_tokens, full))
        print(
            f"  {name} {i + 1}/{len(frames)}: {decision.reason}, full {ms['full'][-1]:.0f} ms, "
            f"gate+cacher {ms['gate+cacher'][-1]:.0f} ms",
            file=sys.stderr,
            flush=True,
        )

    def cos_stats(values: list[torch.Tensor]) -> dict[str, float] | None:
        if not values:
            return None
        cat = torch.cat(values)
        return {"mean": float(cat.mean()), "p5": float(torch.quantile(cat, 0.05))}

    full_total = sum(ms["full"])
    return {
        "frames": len(frames),
        "gated_share": gate.counters.gated_share,
        "gate_reasons": dict(gate.counters.by_reason),
        "passed_recomputed_share": sum(shares) / len(shares) if shares else None,
        "passed_kinds": kinds,
        "cosine_passed": cos_stats(passed_cos),
        "cosine_gated_stale": cos_stats(gated_cos),
        "cosine_all_gate_cacher": cos_stats(passed_cos + gated_cos),
        "cosine_cacher_alone": cos_stats(alone_cos),
        "ms_per_frame": {k: sum(v) / len(v) for k, v in ms.items()},
        "ratio_to_full": {k: sum(ms[k]) / full_total for k in ("cacher", "gate+cacher")},
    }


# ------------------------------------------------------------------------------------- output


def print_tuning(rows: list[dict[str, Any]], clips: Sequence[str]) -> None:
    print("\n## Gate tuning: gated share (missed changing frames)\n")
    print("| cell_threshold | changed_share | " + " | ".join(clips) + " |")
    print("|---|---|" + "---|" * len(clips))
    for row in rows:
        cells = []
        for clip in clips:
            r = row[clip]
            miss = f" ({len(r['missed'])} missed)" if r["missed"] else ""
            cells.append(f"{r['gated_share']:.2f}{miss}")
        print(
            f"| {row['cell_threshold']:g} | {row['changed_share']:g} | " + " | ".join(cells) + " |"
        )


def print_encode(cacher: str, results: dict[str, Any]) -> None:
    print(f"\n## Default gate + {cacher} (encoder time / full-encode time; cosine to full)\n")
    print(
        "| clip | frames | gated | passed: recomputed, kinds | cos passed | cos gated (stale) "
        "| cos all | cacher alone: ratio, cos | gate+cacher ratio | gate ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")

    def c(r: dict[str, Any], key: str) -> str:
        v = r[key]
        return "-" if v is None else f"{v['mean']:.4f} (p5 {v['p5']:.3f})"

    for clip, r in results.items():
        share = r["passed_recomputed_share"]
        shown = "-" if share is None else f"{share:.2f}"
        print(
            f"| {clip} | {r['frames']} | {r['gated_share']:.2f} | "
            f"{shown}, {r['passed_kinds']} | {c(r, 'cosine_passed')} "
            f"| {c(r, 'cosine_gated_stale')} | {c(r, 'cosine_all_gate_cacher')} | "
            f"{r['ratio_to_full']['cacher']:.2f}, {c(r, 'cosine_cacher_alone')} | "
            f"{r['ratio_to_full']['gate+cacher']:.2f} | {r['ms_per_frame']['gate']:.1f} |"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    p.add_argument("--frames", type=int, default=60, help="shared-clip frames to encode")
    p.add_argument("--clip-frames", type=int, default=20, help="frames of each generated clip")
    p.add_argument("--encoder", choices=sorted(BUILDERS), default="base")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-encode", action="store_true", help="only the gate tuning part")
    p.add_argument(
        "--cachers", default="adaptive", help=f"comma-separated, of {', '.join(CACHERS)}"
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.clip.exists():
        print(f"the shared clip {args.clip} is absent", file=sys.stderr)
        return 2
    shared = sample_clip(args.clip, 1.0, 10_000)
    clips = make_clips(shared, shared[min(60, len(shared) - 1)], args.clip_frames)
    every = {"shared": (list(shared), shared_truth(shared)), **clips}
    rows = tune(every)
    print_tuning(rows, list(every))
    out: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "note": "2 cores shared with other jobs",
        },
        "default_gate": GateConfig().__dict__,
        "tuning": rows,
    }
    if not args.no_encode:
        encoder = BUILDERS[args.encoder](torch.device("cpu"))
        print(f"\nencoder: {encoder.description}", file=sys.stderr)
        out["encoder"] = encoder.description
        out["encode"] = {}
        for cacher in args.cachers.split(","):
            config = CACHERS[cacher]
            results = {"shared": encode_clip(encoder, "shared", shared[: args.frames], config)}
            for name, (frames, _) in clips.items():
                results[name] = encode_clip(encoder, name, frames, config)
            out["encode"][cacher] = results
        for cacher, results in out["encode"].items():
            print_encode(cacher, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
