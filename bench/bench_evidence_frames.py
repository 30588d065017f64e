"""Benchmark the evidence frames kept on disk with the memory: bytes per frame and per hour.

The memory keeps one JPEG per stored block (the step's middle frame, ``memory.frames``:
longer side 384 px, quality 80). This decodes the shared clip sampled to 1 fps (one block per
frame, the daemon's default) and encodes each sampled frame three ways, side by side: the stored
evidence frame, the camera board's in-RAM evidence frame (480 px, quality 80) and the full-size
snapshot (quality 85). Disk use per hour at 1 fps is ``3600 x`` the mean bytes per frame.

Prints a table and writes bench/results/evidence_frames.json. Run from the repository root:

    .venv/bin/python bench/bench_evidence_frames.py [--clip PATH] [--fps 1]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from PIL import Image

from stream_agent.memory.frames import FRAME_MAX_SIDE, FRAME_QUALITY, thumbnail_jpeg

ROOT = Path(__file__).resolve().parents[1]
SHARED_CLIP = ROOT.parent / "shared" / "data" / "one-by-one-person-detection.mp4"
RESULTS = ROOT / "bench" / "results" / "evidence_frames.json"


def sampled_frames(clip: Path, fps: float) -> tuple[list[npt.NDArray[np.uint8]], float]:
    """RGB frames at ``fps`` (the first frame at or after each sampling instant), duration s."""
    frames: list[npt.NDArray[np.uint8]] = []
    next_t = 0.0
    last = 0.0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else 0.0
            last = t
            if t + 1e-6 >= next_t:
                frames.append(frame.to_ndarray(format="rgb24"))
                next_t += 1.0 / fps
    return frames, last


def full_jpeg(image: npt.NDArray[np.uint8], quality: int = 85) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", type=Path, default=SHARED_CLIP)
    parser.add_argument("--fps", type=float, default=1.0)
    args = parser.parse_args()
    frames, duration = sampled_frames(args.clip, args.fps)
    ways: dict[str, Any] = {
        f"stored evidence ({FRAME_MAX_SIDE} px, q{FRAME_QUALITY})": thumbnail_jpeg,
        "board RAM evidence (480 px, q80)": lambda im: thumbnail_jpeg(im, max_side=480),
        "full-size snapshot (q85)": full_jpeg,
    }
    rows = []
    for name, encode in ways.items():
        began = time.perf_counter()
        sizes = [len(encode(image)) for image in frames]
        elapsed = time.perf_counter() - began
        mean = float(np.mean(sizes))
        rows.append(
            {
                "way": name,
                "frames": len(sizes),
                "mean_bytes": mean,
                "max_bytes": int(max(sizes)),
                "bytes_per_hour": mean * args.fps * 3600.0,
                "encode_ms_per_frame": 1000.0 * elapsed / len(sizes),
            }
        )
    height, width = frames[0].shape[:2]
    print(
        f"clip {args.clip.name}: {width}x{height}, {duration:.1f} s, "
        f"{len(frames)} frames at {args.fps:g} fps"
    )
    print(f"{'way':42} {'mean B':>9} {'max B':>9} {'MB/hour':>9} {'ms/frame':>9}")
    for r in rows:
        print(
            f"{r['way']:42} {r['mean_bytes']:9.0f} {r['max_bytes']:9d} "
            f"{r['bytes_per_hour'] / 1e6:9.1f} {r['encode_ms_per_frame']:9.2f}"
        )
    base = rows[-1]["mean_bytes"]
    print(f"stored evidence frame / full-size snapshot: {rows[0]['mean_bytes'] / base:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "clip": str(args.clip),
                "size": [width, height],
                "duration_s": duration,
                "fps": args.fps,
                "ways": rows,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
