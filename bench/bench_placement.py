"""Benchmark the Ray hop: ``placement: local`` against ``placement: ray`` in one run.

Same tiny model, same frames, same questions, one engine each way (the Ray engine is one actor on
a local cluster started here, CPU only): time to first token of ``--questions`` questions (from
receipt at the front), the frame lag (capture to end of encoding) once the frames are in, then,
on a two-engine Ray group, the time from killing an engine to its cameras answering from the
other one (detection by the health check plus the new owner opening the cameras' stores). Also
what a frame costs to send to an engine as a raw array against as a JPEG (encode, pickle size).

``--realistic`` runs the TTFT and frame-lag arms with the realistic-shape LLaVA-OneVision-0.5B
(random weights, float32, about 3.6 GB: the engine actor gets ``--engine-cpus`` CPUs, which Ray
also makes its torch threads, so give it what the local engine uses) and skips the move arm (two
realistic engines do not fit beside the local one on a small machine; the move time does not
depend on the model beyond opening the stores).

Prints a table and writes ``bench/results/placement.json``. Run from the repository root:

    PYTHONPATH=$PWD .venv/bin/python bench/bench_placement.py
    PYTHONPATH=$PWD .venv/bin/python bench/bench_placement.py --realistic --frames 2 \
        --questions 6 --engine-cpus 2 --out bench/results/placement-realistic.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ingest.records import Frame
from stream_agent.answers import AnswerFinal
from stream_agent.config import DaemonConfig
from stream_agent.engine import Engine, Question, question_received_now
from stream_agent.models.loading import model_loader
from stream_agent.models.testing import make_test_model
from stream_agent.pipeline import ModelWorker

CAMERAS = ("a", "b")


def picture(i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:120, 0:160]
    img = np.stack([(xx * 3) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], axis=-1)
    img[20:60, 10 + 3 * i : 50 + 3 * i] = (250, 30, 200)
    return img.astype(np.uint8)


TOKENS_PER_FRAME = {"tiny": 8, "realistic": 64}
SHAPES = "tiny"  # set by --realistic


def config(model: Path, store: Path, placement: Any) -> DaemonConfig:
    return DaemonConfig.model_validate(
        {
            "cameras": [{"name": c, "path": "unused.mp4"} for c in CAMERAS],
            # one token: its time is the time to the first token even where random weights
            # pick a token without text (then no delta marks it)
            "model": {"path": str(model), "device": "cpu", "max_new_tokens": 1},
            "pruner": {"tokens_per_frame": TOKENS_PER_FRAME[SHAPES]},
            "memory": {"store_dir": str(store)},
            "engine": {"placement": placement},
        }
    )


async def drive(engine: Any, frames: int, questions: int) -> dict[str, float]:
    now = time.time()
    for i in range(frames):
        for c in CAMERAS:
            engine.submit_frame(Frame(c, i, float(i), now + i * 0.001, picture(i)))
            await asyncio.sleep(0.02)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        s = engine.snapshot()
        if all(s.frames_encoded.get(c, 0) >= frames for c in CAMERAS):
            break
        await asyncio.sleep(0.05)
    lags = list(engine.snapshot().frame_lag_s.values())
    ttfts = []
    for q in range(questions):
        camera = CAMERAS[q % 2]
        question = Question(f"q{q}", "What moves?", camera, received_at=question_received_now())
        _, final = await engine.ask(question).collect()
        assert isinstance(final, AnswerFinal), final
        t = final.timings
        ttfts.append(t.ttft_s if t.ttft_s is not None else t.total_s)
    return {
        "ttft_median_s": statistics.median(ttfts) if ttfts else float("nan"),
        "frame_lag_last_s": max(lags) if lags else float("nan"),
    }


async def local_run(model: Path, store: Path, frames: int, questions: int) -> dict[str, float]:
    cfg = config(model, store, "local")
    worker = ModelWorker(cfg, load=model_loader(cfg.model), model_name="tiny")
    engine = Engine(worker, cfg.engine)
    engine.start()
    await asyncio.wrap_future(worker.opened)
    try:
        return await drive(engine, frames, questions)
    finally:
        await engine.aclose()


async def ray_run(
    model: Path, store: Path, frames: int, questions: int, cpus: float
) -> dict[str, float]:
    from stream_agent.placement.ray_group import RayEngineGroup

    placement = {"kind": "ray", "ray": {"engines": 1, "num_cpus": cpus, "health_interval_s": 0.2}}
    group = RayEngineGroup(config(model, store, placement))
    group.start()
    await asyncio.wrap_future(group.opened)
    try:
        return await drive(group, frames, questions)
    finally:
        await group.aclose()


async def move_run(model: Path, store: Path) -> dict[str, float]:
    from stream_agent.placement.ray_group import RayEngineGroup

    placement = {"kind": "ray", "ray": {"engines": 2, "num_cpus": 0.5, "health_interval_s": 0.2}}
    group = RayEngineGroup(config(model, store, placement))
    group.start()
    await asyncio.wrap_future(group.opened)
    try:
        await drive(group, 4, 0)
        group.flush().result()
        victim = group.placement()[0]
        killed = time.monotonic()
        group.kill_engine(victim.engine)
        while any(p.engine == victim.engine for p in group.placement()):
            await asyncio.sleep(0.01)
        moved = time.monotonic() - killed
        q = Question("m", "What moved?", victim.camera, received_at=question_received_now())
        _, final = await group.ask(q).collect()
        assert isinstance(final, AnswerFinal) and final.evidence, final
        return {
            "kill_to_moved_s": moved,
            "kill_to_answer_s": time.monotonic() - killed,
            "adopt_s": group.last_move_s or float("nan"),
        }
    finally:
        await group.aclose()


def transport(size: tuple[int, int]) -> dict[str, float]:
    h, w = size
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    img[:, : w // 2] = 128  # half flat, like a real scene
    t0 = time.perf_counter()
    raw = pickle.dumps(img, protocol=5)
    t1 = time.perf_counter()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    t2 = time.perf_counter()
    np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    t3 = time.perf_counter()
    return {
        "raw_bytes": len(raw),
        "raw_pickle_ms": (t1 - t0) * 1e3,
        "jpeg_bytes": buf.tell(),
        "jpeg_encode_ms": (t2 - t1) * 1e3,
        "jpeg_decode_ms": (t3 - t2) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--realistic", action="store_true", help="realistic-shape model")
    parser.add_argument("--engine-cpus", type=float, default=0.5, help="the Ray engine's CPUs")
    parser.add_argument("--out", type=Path, default=Path("bench/results/placement.json"))
    args = parser.parse_args()
    global SHAPES
    SHAPES = "realistic" if args.realistic else "tiny"
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_test_model(
            "llava_onevision", root / "model", seed=0, overwrite=True, realistic=args.realistic
        )
        local = asyncio.run(local_run(model, root / "local", args.frames, args.questions))
        remote = asyncio.run(
            ray_run(model, root / "ray", args.frames, args.questions, args.engine_cpus)
        )
        move = {} if args.realistic else asyncio.run(move_run(model, root / "move"))
    ray.shutdown()
    wire = {f"{h}p": transport((h, w)) for h, w in ((480, 640), (1080, 1920))}
    result = {
        "model": SHAPES,
        "engine_cpus": args.engine_cpus,
        "local": local,
        "ray": remote,
        "ttft_ratio": remote["ttft_median_s"] / local["ttft_median_s"],
        "move": move,
        "transport": wire,
    }
    print(f"{'':24}{'local':>10}{'ray':>10}{'ray/local':>10}")
    for key in ("ttft_median_s", "frame_lag_last_s"):
        print(f"{key:24}{local[key]:10.4f}{remote[key]:10.4f}{remote[key] / local[key]:10.2f}")
    for key, value in move.items():
        print(f"{key:24}{value:10.3f}")
    for name, t in wire.items():
        print(
            f"frame {name}: raw {t['raw_bytes'] / 1e6:.2f} MB, "
            f"pickled in {t['raw_pickle_ms']:.2f} ms; "
            f"JPEG {t['jpeg_bytes'] / 1e3:.0f} kB, encode {t['jpeg_encode_ms']:.1f} ms, "
            f"decode {t['jpeg_decode_ms']:.1f} ms"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
