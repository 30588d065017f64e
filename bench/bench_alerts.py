"""Benchmark of alert rule checks: batching, their cost to questions, and what the gates save.

Three parts, each comparing two ways in the same run:

1. ``check``: on the realistic-shape LLaVA-OneVision-0.5B LLM (random weights, fp32; random
   visual tokens, no vision tower, as ``bench_memory.py``), after ``--blocks`` blocks of one
   camera, the engine-side time of :meth:`Memory.check` with 1, 5 and 20 conditions batched in
   one forward, against 20 single checks one after the other (target: 20 batched <= 2x one).
2. ``ttft``: the same memory behind a real :class:`~stream_agent.engine.Engine`; questions'
   time to first token while a thread keeps 20-rule checks queued back to back, against no
   checks (target: a question waits at most about one batched check longer: questions go
   first, but a check that has started runs to its end).
3. ``gates``: frames of the shared clip at 1 fps through the real vision chain (tiny LLaVA
   model: the cacher's changed-token share does not depend on the LLM's size), a check due at
   every frame: the share of model checks the motion gate cuts (the rules' default
   ``motion``: over the daemon's change gate in front of the encoder, as the daemon runs it; and,
   for comparison, over the cacher's per-frame recomputed share with the ``stc`` and the
   ``adaptive`` cacher, what the daemon reports when the change gate is off) and the HOG person
   gate (target: >= half). Uses :mod:`stream_agent.alerts.gates`.

    .venv/bin/python bench/bench_alerts.py            # table + bench/results/bench_alerts.json
    .venv/bin/python bench/bench_alerts.py --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cacher  # noqa: E402
from bench.bench_memory import Stream  # noqa: E402
from ingest import IngestOptions, open_source  # noqa: E402
from ingest.records import Frame  # noqa: E402
from stream_agent.alerts import gates  # noqa: E402
from stream_agent.alerts.rules import GateSpec  # noqa: E402
from stream_agent.answers import AnswerFinal  # noqa: E402
from stream_agent.config import CacherConfig, EngineConfig, PrunerConfig  # noqa: E402
from stream_agent.engine import (  # noqa: E402
    AnswerEvent,
    Engine,
    FrameBatch,
    Question,
    WorkerStatus,
    question_received_now,
)
from stream_agent.engine.checks import DescribeRequest, RuleCondition, RuleScore  # noqa: E402
from stream_agent.memory import CheckCondition, FrameStamp, Memory, MemoryOptions  # noqa: E402
from stream_agent.models.base import VideoLLM  # noqa: E402
from stream_agent.models.records import DecodeOptions  # noqa: E402
from stream_agent.models.testing import build_test_adapter  # noqa: E402
from stream_agent.pipeline.stages import VisionChain, answer_events, chain_settings  # noqa: E402

CLIP = ROOT.parent / "shared" / "data" / "one-by-one-person-detection.mp4"
WALL0 = 1_700_000_000.0
CAMERA = "door"
RULES = [
    "a person is at the door",
    "someone is carrying a package",
    "a car is parked in the driveway",
    "a dog is in the garden",
    "the gate is open",
]
QUESTION = "What is the person at the door doing right now?"


def conditions(n: int) -> list[CheckCondition]:
    return [CheckCondition(f"{RULES[i % len(RULES)]} ({i})") for i in range(n)]


# ------------------------------------------------------------------------------- 1. batching


def timed(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def bench_check(memory: Memory, repeats: int) -> dict[str, float]:
    memory.check(CAMERA, conditions(1))  # warm up
    one = timed(lambda: memory.check(CAMERA, conditions(1)), repeats)
    five = timed(lambda: memory.check(CAMERA, conditions(5)), repeats)
    twenty = timed(lambda: memory.check(CAMERA, conditions(20)), repeats)
    singles = timed(lambda: [memory.check(CAMERA, [c]) for c in conditions(20)], 1)
    return {"1": one, "5": five, "20": twenty, "20 unbatched": singles}


# --------------------------------------------------------------------------- 2. ttft vs checks


class MemoryWorker:
    """A Worker over an already filled memory (frames are not part of this benchmark)."""

    def __init__(self, memory: Memory, new_tokens: int) -> None:
        self.memory = memory
        self.options = DecodeOptions(max_new_tokens=new_tokens)

    def open(self) -> None: ...
    def encode(self, batch: FrameBatch) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...

    def answer(self, question: Question, cancel: threading.Event) -> Iterator[AnswerEvent]:
        return answer_events(
            self.memory,
            question.text,
            camera=question.camera,
            since=None,
            until=None,
            options=self.options,
            cancel=cancel,
        )

    def check(self, camera: str, conds: Sequence[RuleCondition]) -> list[RuleScore]:
        results = self.memory.check(camera, [CheckCondition(c.text, c.since) for c in conds])
        return [RuleScore(r.score) for r in results]

    def describe(self, request: DescribeRequest) -> str:
        raise NotImplementedError("not benchmarked")

    def status(self) -> WorkerStatus:
        return WorkerStatus(ready=True, model="bench")


async def ask_all(engine: Engine, count: int, gap_s: float) -> list[float]:
    ttfts = []
    for i in range(count):
        await asyncio.sleep(gap_s * (0.3 + 0.4 * (i % 2)))  # land at different points of a check
        q = Question(f"q{i}", QUESTION, camera=CAMERA, received_at=question_received_now())
        _, final = await engine.ask(q).collect()
        assert isinstance(final, AnswerFinal), final
        # random weights may decode tokens without text: then the answer's time stands in
        t = final.timings
        ttfts.append(t.ttft_s if t.ttft_s is not None else t.total_s)
    return ttfts


def check_loop(engine: Engine, stop: threading.Event, done: list[int]) -> None:
    """Keep a 20-rule check queued back to back until ``stop``."""
    while not stop.is_set():
        conds = [RuleCondition(c.text) for c in conditions(20)]
        engine.check_rules(CAMERA, conds).result()
        done[0] += 1


def bench_ttft(memory: Memory, questions: int, check_s: float, new_tokens: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("no checks", "20-rule checks looping"):
        engine = Engine(MemoryWorker(memory, new_tokens), EngineConfig())
        engine.start()
        stop = threading.Event()
        checks = [0]
        looper = threading.Thread(target=check_loop, args=(engine, stop, checks), daemon=True)
        if mode != "no checks":
            looper.start()
            time.sleep(check_s / 2)
        try:
            ttfts = asyncio.run(ask_all(engine, questions, check_s))
        finally:
            stop.set()
            if looper.is_alive():
                looper.join(60)
            engine.stop("cancel", 30)
        out[mode] = {"ttft_median_s": statistics.median(ttfts), "ttft_max_s": max(ttfts)}
        out[mode]["checks_run"] = checks[0]
    return out


# --------------------------------------------------------------------------------- 3. gates


async def clip_frames(count: int) -> list[Frame]:
    frames: list[Frame] = []
    async with open_source(str(CLIP), IngestOptions(fps=1.0, realtime=False)) as source:
        async for frame in source:
            frames.append(Frame(CAMERA, len(frames), frame.pts, WALL0 + frame.pts, frame.image))
            if len(frames) >= count:
                break
    return frames


def changed_shares(model: VideoLLM, frames: list[Frame], method: str) -> list[float]:
    """Each frame's cacher recomputed share (what the daemon hands the alerts' motion log)."""
    settings = chain_settings(CacherConfig(method=method), PrunerConfig(), model)  # type: ignore[arg-type]
    chain = VisionChain(CAMERA, model, settings)
    counters = chain._cacher.counters  # the chain's own counters: read-only here
    shares = []
    for frame in frames:
        before = (counters.token_layers, counters.recomputed_token_layers)
        chain.add([frame])
        layers = counters.token_layers - before[0]
        recomputed = counters.recomputed_token_layers - before[1]
        shares.append(recomputed / layers if layers else 1.0)
    return shares


def change_gate_cuts(frames: list[Frame], min_share: float) -> list[bool]:
    """Whether a check due at each frame is cut with the daemon's default change gate in front
    of the encoder (what the pipeline hands the alerts' motion log): a frame the gate holds back
    is no new frame at all, a passed one carries the share of the picture that changed."""
    gate = cacher.ChangeGate(cacher.GateConfig())
    cuts = []
    for frame in frames:
        decision = gate.check(CAMERA, frame.image, frame.pts)
        if not decision.passed:
            cuts.append(gates.motion_gate(0, None, min_share) is not None)
        else:
            cuts.append(gates.motion_gate(1, decision.changed_share, min_share) is not None)
    return cuts


def bench_gates(frames: list[Frame], min_share: float) -> dict[str, Any]:
    tiny = build_test_adapter("llava_onevision", seed=0)
    out: dict[str, Any] = {"frames": len(frames), "min_share": min_share}
    cut_by_motion: dict[str, list[bool]] = {}
    cut_by_motion["change gate"] = change_gate_cuts(frames, min_share)
    out["motion (change gate)"] = sum(cut_by_motion["change gate"]) / len(frames)
    for method in ("stc", "adaptive"):
        shares = changed_shares(tiny, frames, method)
        # a check due at every frame sees that one new frame: motion_gate(1, its share, 0.02)
        cut = [gates.motion_gate(1, s, min_share) is not None for s in shares]
        cut_by_motion[method] = cut
        out[f"motion ({method})"] = sum(cut) / len(cut)
    detector = gates.PersonDetector()
    began = time.perf_counter()
    no_person = [not detector.detect(f.image).present for f in frames]
    out["person_ms_per_frame"] = 1000 * (time.perf_counter() - began) / len(frames)
    out["person"] = sum(no_person) / len(no_person)
    for method, cut in cut_by_motion.items():
        both = [a or b for a, b in zip(cut, no_person, strict=True)]
        out[f"motion ({method}) + person"] = sum(both) / len(both)
    return out


# ------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=12, help="blocks fed before checking")
    parser.add_argument("--tokens", type=int, default=64, help="visual tokens per block")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=2)
    parser.add_argument("--gate-frames", type=int, default=120)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny LLM (a smoke run)")
    parser.add_argument("--skip", choices=["model", "gates"], action="append", default=[])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--tag", default="", help="suffix of the JSON file's name")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "machine": {
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "python": platform.python_version(),
            "note": "2 CPU cores shared with other jobs" if args.device == "cpu" else "",
        },
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    rows: list[tuple[str, str]] = []
    if "model" not in args.skip:
        model = build_test_adapter(
            "llava_onevision", realistic=not args.tiny, dtype="float32", device=args.device
        )
        stream = Stream(model, args.tokens)
        with tempfile.TemporaryDirectory() as store:
            memory = Memory(model, MemoryOptions(store_dir=Path(store), fsync=False))
            for i in range(args.blocks):
                memory.append_step(
                    CAMERA, stream.tokens(i), FrameStamp(seq=i, pts=float(i), wall=WALL0 + i)
                )
            prompt_tokens = [
                len(model.build_prompt(f"Answer yes or no. {c.text}?").suffix_ids)
                for c in conditions(20)
            ]
            print("timing checks ...", flush=True)
            check = bench_check(memory, args.repeats)
            print(f"  {check}", flush=True)
            results["check_s"] = check
            results["suffix_tokens_mean"] = statistics.fmean(prompt_tokens)
            rows += [(f"check, {k} rule(s)", f"{1000 * v:.0f} ms") for k, v in check.items()]
            rows.append(("20 batched / 1", f"{check['20'] / check['1']:.2f}x (target <= 2)"))
            rows.append(
                ("20 unbatched / 20 batched", f"{check['20 unbatched'] / check['20']:.2f}x")
            )
            print("question TTFT with and without checks ...", flush=True)
            ttft = bench_ttft(memory, args.questions, check["20"], args.new_tokens)
            results["ttft"] = ttft
            base = ttft["no checks"]["ttft_median_s"]
            busy = ttft["20-rule checks looping"]["ttft_median_s"]
            worst = ttft["20-rule checks looping"]["ttft_max_s"]
            rows.append(("question TTFT, no checks (median)", f"{1000 * base:.0f} ms"))
            rows.append(("question TTFT, checks looping (median)", f"{1000 * busy:.0f} ms"))
            rows.append(
                (
                    "extra wait (max) / one 20-rule check",
                    f"{(worst - base) / check['20']:.2f} (target <= 1)",
                )
            )
            memory.close()
    if "gates" not in args.skip:
        print("gates over the shared clip ...", flush=True)
        frames = asyncio.run(clip_frames(args.gate_frames))
        gate = bench_gates(frames, min_share=GateSpec().motion or 0.0)
        results["gates"] = gate
        for key in (
            "motion (change gate)",
            "motion (change gate) + person",
            "motion (stc)",
            "motion (adaptive)",
            "person",
            "motion (stc) + person",
            "motion (adaptive) + person",
        ):
            rows.append((f"checks cut: {key}", f"{100 * gate[key]:.0f}% of {gate['frames']}"))
        rows.append(("HOG person detector", f"{gate['person_ms_per_frame']:.0f} ms/frame"))
    width = max(len(k) for k, _ in rows)
    print(f"bench_alerts on {args.device} ({results['machine']['note'] or 'dedicated'}):")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_alerts{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
