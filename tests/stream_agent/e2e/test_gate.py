"""The change gate through the real daemon: a generated static clip replayed live at 1 fps.

Only the first frame is encoded; every later one is gated (counted in /metrics), and the one
block's evidence times stretch over the still period the daemon has watched.
"""

from __future__ import annotations

import asyncio
import signal
import time
from fractions import Fraction
from pathlib import Path

import av

from tests.support.daemon import (
    TOKEN,
    DaemonProcess,
    aget,
    client,
    metric,
    moving_square,
    write_config,
)
from tests.support.ws import ask, recv

CAMERA = "hall"


def write_static_clip(path: Path, seconds: int, rate: int = 5) -> Path:
    """``seconds`` of one unchanging picture (H.264, 160x120)."""
    picture = moving_square(0, 160, 120)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.time_base = Fraction(1, rate)
        for i in range(seconds * rate):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


async def test_a_static_clip_is_gated_and_counted(tmp_path: Path, tiny_llava: Path) -> None:
    clip = write_static_clip(tmp_path / "static.mp4", 25)
    config = write_config(
        tmp_path / "daemon.yaml",
        cameras=[{"name": CAMERA, "path": str(clip), "fps": 1}],
        model=tiny_llava,
        store=tmp_path / "memory",
    )
    daemon = DaemonProcess(["--config", str(config)], tmp_path / "daemon.log")
    daemon.start()
    try:
        base = daemon.http_url
        deadline = time.monotonic() + 90
        gated = 0.0
        while gated < 5:
            assert time.monotonic() < deadline, daemon.log_tail()
            await asyncio.sleep(0.5)
            text = (await aget(f"{base}/metrics", TOKEN)).text
            labels = {"camera": CAMERA, "decision": "gated", "reason": "unchanged"}
            gated = metric(text, "stream_agent_gate_frames_total", **labels) or 0.0
        first = {"camera": CAMERA, "decision": "passed", "reason": "first"}
        assert metric(text, "stream_agent_gate_frames_total", **first) == 1
        assert metric(text, "stream_agent_memory_blocks", camera=CAMERA) == 1
        assert metric(text, "stream_agent_engine_frames_encoded_total", camera=CAMERA) >= 6
        async with client(daemon) as ws:
            await recv(ws)
            answer = (await ask(ws, "g1", camera=CAMERA))[-1]
        assert answer["type"] == "answer", answer
        (moment,) = answer["evidence"]
        assert moment["start_s"] == 0.0 and moment["end_s"] >= 5.0, moment
        assert daemon.running(), daemon.log_tail()
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log_tail()
    finally:
        daemon.close()
