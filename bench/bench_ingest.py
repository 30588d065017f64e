"""Benchmark ingest: its decode+sample cost against a bare PyAV loop, and stall recovery time.

1. Throughput, in one run on the same file: a bare PyAV loop (decode, convert to RGB) against
   ingest (decode thread, timeline, sampler, hand-off, asyncio consumer) reading as fast as
   possible, at full decode (every frame) and sampled to 1 fps. Each way runs ``--repeats`` times,
   alternating, and the best time counts (the least disturbed by other work on the machine).
   Target: ingest at most 10% over the bare loop at full decode.
2. Recovery on a real GStreamer RTSP server: the time from SIGCONT to the first frame captured
   after it, for a short freeze (resumed on the same connection) and a long one (the connection
   was given up; recovery needs a reconnect).

Prints a table and writes bench/results/ingest.json. Run from the repository root:

    .venv/bin/python bench/bench_ingest.py [--clip PATH] [--repeats 3] [--skip-rtsp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from ingest import (
    BackoffPolicy,
    IngestOptions,
    SourceSpec,
    SourceState,
    VideoSource,
    open_source,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_CLIP = ROOT.parent / "shared" / "data" / "one-by-one-person-detection.mp4"
RTSP_SCRIPT = ROOT / "tests" / "support" / "rtsp_server.py"
RESULTS = ROOT / "bench" / "results" / "ingest.json"


def make_clip(path: Path, seconds: int = 60) -> Path:
    """A 768x432 10 fps H.264 clip with moving content, for machines without the shared clip."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 768, 432, "yuv420p"
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (432, 768, 3), dtype=np.uint8)
        for i in range(seconds * 10):
            image = np.roll(base, i * 4, axis=1)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


# --- throughput --------------------------------------------------------------------------------


def bare_loop(path: Path, fps: float | None) -> tuple[float, float, int]:
    """Decode every frame with PyAV; convert to RGB the frames a 1/fps grid keeps.

    Returns (wall seconds, CPU seconds of the whole process, frames kept)."""
    started, cpu = time.perf_counter(), time.process_time()
    kept = 0
    next_tick = 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # what ingest uses
        for frame in container.decode(stream):
            t = frame.time or 0.0
            if fps is None or t + 1e-6 >= next_tick:
                frame.to_ndarray(format="rgb24")
                kept += 1
                if fps is not None:
                    next_tick = (int(t * fps + 1e-6) + 1) / fps
    return time.perf_counter() - started, time.process_time() - cpu, kept


async def ingest_loop(path: Path, fps: float | None) -> tuple[float, float, int]:
    started, cpu = time.perf_counter(), time.process_time()
    kept = 0
    async with open_source(
        SourceSpec.parse(str(path)), IngestOptions(fps=fps, realtime=False)
    ) as src:
        async for _frame in src:
            kept += 1
    return time.perf_counter() - started, time.process_time() - cpu, kept


def throughput(path: Path, repeats: int) -> list[dict[str, Any]]:
    rows = []
    with av.open(str(path)) as container:
        total = sum(1 for _ in container.decode(video=0))  # also warms the page cache
    for label, fps in (("full decode", None), ("1 fps", 1.0)):
        bare: list[float] = []
        ours: list[float] = []
        bare_cpu: list[float] = []
        ours_cpu: list[float] = []
        kept_bare = kept_ours = 0
        for _ in range(repeats):
            seconds, cpu, kept_bare = bare_loop(path, fps)
            bare.append(seconds)
            bare_cpu.append(cpu)
            seconds, cpu, kept_ours = asyncio.run(ingest_loop(path, fps))
            ours.append(seconds)
            ours_cpu.append(cpu)
        assert kept_bare == kept_ours, (kept_bare, kept_ours)
        rows.append(
            {
                "mode": label,
                "frames_decoded": total,
                "frames_out": kept_ours,
                "bare_s": min(bare),
                "ingest_s": min(ours),
                "bare_fps": total / min(bare),
                "ingest_fps": total / min(ours),
                "overhead": min(ours) / min(bare) - 1.0,
                "bare_cpu_s": min(bare_cpu),
                "ingest_cpu_s": min(ours_cpu),
                "overhead_cpu": min(ours_cpu) / min(bare_cpu) - 1.0,
                "bare_all_s": bare,
                "ingest_all_s": ours,
            }
        )
    return rows


# --- recovery --------------------------------------------------------------------------------


class Server:
    def __init__(self, clip: Path) -> None:
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", str(RTSP_SCRIPT), "--file", str(clip), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            self.close()
            raise RuntimeError(f"the RTSP server did not start: {line!r}")
        self.url = f"rtsp://127.0.0.1:{line.split()[1]}/test"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(10)


async def recover_once(server: Server, options: IngestOptions, long: bool) -> dict[str, Any]:
    frames: list[float] = []

    async def consume(source: VideoSource) -> None:
        async for frame in source:
            frames.append(frame.wall_time)

    async with open_source(SourceSpec.parse(server.url), options) as source:
        task = asyncio.create_task(consume(source))
        await source.wait_for_state(SourceState.ONLINE, timeout=20)
        while not frames or frames[-1] < time.time() - 0.5:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        server.signal(signal.SIGSTOP)
        stopped = time.time()
        stalled = await source.wait_for_state(SourceState.STALLED, timeout=30)
        if long:
            while source.counters().connect_failures < 1:
                await asyncio.sleep(0.05)
        resumed = time.time()
        server.signal(signal.SIGCONT)
        while not frames or frames[-1] <= resumed:
            await asyncio.sleep(0.005)
        fresh = next(t for t in frames if t > resumed)
        counters = source.counters()
        task.cancel()
    return {
        "freeze": "long" if long else "short",
        "stall_detected_after_s": stalled.wall_time - stopped,
        "frozen_s": resumed - stopped,
        "sigcont_to_fresh_frame_s": fresh - resumed,
        "reconnects": counters.reconnects,
    }


def recovery(clip: Path, repeats: int) -> list[dict[str, Any]]:
    options = IngestOptions(
        fps=10.0,
        open_timeout_s=2.0,
        read_timeout_s=2.0,
        backoff=BackoffPolicy(initial_s=0.2, max_s=1.0, reset_after_s=1.0),
    )
    results = []
    for long in (False, True):
        for _ in range(repeats):
            server = Server(clip)
            try:
                results.append(asyncio.run(recover_once(server, options, long)))
            finally:
                server.close()
    return results


# --- report ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rtsp-repeats", type=int, default=2)
    parser.add_argument("--skip-rtsp", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip or (
            SHARED_CLIP if SHARED_CLIP.is_file() else make_clip(Path(tmp) / "c.mp4")
        )
        rows = throughput(clip, args.repeats)
        rtsp = [] if args.skip_rtsp else recovery(clip, args.rtsp_repeats)

    print(f"\nclip: {clip}  ({rows[0]['frames_decoded']} frames)\n")
    header = ("mode", "bare s", "ingest s", "bare fps", "ingest fps", "wall +", "cpu +")
    print("{:<12} {:>8} {:>9} {:>9} {:>11} {:>8} {:>8}".format(*header))
    for r in rows:
        print(
            f"{r['mode']:<12} {r['bare_s']:>8.3f} {r['ingest_s']:>9.3f} {r['bare_fps']:>9.0f} "
            f"{r['ingest_fps']:>11.0f} {r['overhead']:>+8.1%} {r['overhead_cpu']:>+8.1%}"
        )
    print("(best of the repeats; 'wall +'/'cpu +': ingest's extra wall-clock/CPU time over bare)")
    if rtsp:
        header2 = ("freeze", "stall detected s", "frozen s", "SIGCONT->fresh frame s", "reconnects")
        print("\n{:<7} {:>16} {:>9} {:>23} {:>10}".format(*header2))
        for r in rtsp:
            print(
                f"{r['freeze']:<7} {r['stall_detected_after_s']:>16.2f} {r['frozen_s']:>9.2f} "
                f"{r['sigcont_to_fresh_frame_s']:>23.3f} {r['reconnects']:>10}"
            )
    full = rows[0]
    for key, what in (("overhead", "wall time"), ("overhead_cpu", "CPU time")):
        verdict = "met" if full[key] <= 0.10 else "NOT met"
        print(f"target (ingest <= 10% over bare at full decode), {what}: {verdict}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "clip": str(clip),
                "machine": {
                    "python": platform.python_version(),
                    "cpu": platform.processor(),
                    "av": av.__version__,
                },
                "throughput": rows,
                "recovery": rtsp,
                "recovery_options": {
                    "read_timeout_s": 2.0,
                    "open_timeout_s": 2.0,
                    "backoff_max_s": 1.0,
                },
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
