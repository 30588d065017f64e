"""``stream-agent probe`` run as a subprocess, as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest


def run_probe(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_agent", "probe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 s, 10 fps clip with an audio track."""
    path = tmp_path_factory.mktemp("probe") / "clip.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            image = np.full((48, 64, 3), i * 8, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def test_probe_prints_properties_states_and_frame_times(clip: Path) -> None:
    done = run_probe(str(clip), "--fps", "2", "--fast")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"^video\s+h264 64x48, 10 fps, rotation 0$", out, re.M)
    assert re.search(r"^kind\s+file \(recording\)$", out, re.M)
    assert re.search(r"^duration\s+3\.000 s$", out, re.M)
    frame_pts = [float(p) for p in re.findall(r"frame\s+seq=\d+ pts=([\d.]+) 64x48", out)]
    assert frame_pts == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    states = re.findall(r"state\s+(\w+)", out)
    assert states == ["connecting", "online", "ended"]
    assert "counters   decoded=30 sampled=6 delivered=6 dropped_stale=0" in out


def test_probe_duration_and_resize(clip: Path) -> None:
    done = run_probe(str(clip), "--fps", "1", "--fast", "--duration", "2", "--max-size", "32x32")
    assert done.returncode == 0, done.stderr
    assert re.findall(r"pts=([\d.]+) (\d+x\d+)", done.stdout) == [
        ("0.000", "32x24"),
        ("1.000", "32x24"),
    ]


@pytest.mark.parametrize(
    ("source", "extra", "fragment"),
    [
        ("missing-clip.mp4", [], "no such file"),
        ("ftp://host/a.mp4", [], "unsupported source scheme"),
        ("rtsp://admin:PassW0rd99@127.0.0.1:9/cam", ["--open-timeout", "3"], "connection refused"),
    ],
)
def test_probe_errors_exit_3_with_a_sentence(source: str, extra: list[str], fragment: str) -> None:
    done = run_probe(source, *extra, timeout=60)
    assert done.returncode == 3
    assert fragment in done.stderr
    assert "Traceback" not in done.stderr
    assert "PassW0rd99" not in done.stderr + done.stdout


def test_probe_bad_option_exits_2() -> None:
    done = run_probe("clip.mp4", "--fps", "0")
    assert done.returncode == 2
    assert "fps must be a positive number" in done.stderr
