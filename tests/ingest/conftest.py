"""Fixtures for the ingest tests: synthetic clips written with PyAV, and a real RTSP server.

Every synthetic frame carries its index as a bar code (eight vertical stripes, white for a set
bit), so a test can tell exactly which frames it received, even after scaling and lossy coding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from tests.support.rtsp import RtspServer, gst_rtsp_problem

ROOT = Path(__file__).resolve().parents[2]
SHARED_CLIP = ROOT.parent / "shared" / "data" / "one-by-one-person-detection.mp4"
BITS = 8


def barcode(index: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """An RGB frame whose eight vertical stripes spell ``index`` in binary (stripe 0 = bit 0)."""
    image = np.zeros((height, width, 3), np.uint8)
    for bit in range(BITS):
        if index >> bit & 1:
            image[:, bit * width // BITS : (bit + 1) * width // BITS] = 255
    return image


def read_barcode(image: npt.NDArray[np.uint8]) -> int:
    """The index :func:`barcode` wrote into ``image`` (read at the stripes' centres)."""
    height, width = image.shape[:2]
    row = image[height // 2]
    value = 0
    for bit in range(BITS):
        x = int((bit + 0.5) * width / BITS)
        if row[x].mean() > 128:
            value |= 1 << bit
    return value


def write_clip(
    path: Path,
    pts: Sequence[int],
    *,
    rate: int = 10,
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    audio: bool = False,
    container_options: dict[str, str] | None = None,
    image: Callable[[int, int, int], npt.NDArray[np.uint8]] = barcode,
) -> Path:
    """Encode one frame per entry of ``pts`` (in units of ``1/rate`` s), frame i showing
    ``image(i, width, height)``; optionally with display rotation and an AAC audio track."""
    width, height = size
    time_base = Fraction(1, rate)
    with av.open(str(path), "w", options=container_options or {}) as out:
        video = out.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.codec_context.time_base = time_base
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=16000) if audio else None
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(image(i, width, height), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            seconds = (max(pts) + 1) / rate
            for n in range(int(seconds * 16000 / 1024) + 1):
                chunk = av.AudioFrame.from_ndarray(
                    np.full((1, 1024), 0.1 * np.sin(n), np.float32), format="fltp", layout="mono"
                )
                chunk.sample_rate, chunk.pts = 16000, n * 1024
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        sound = out.add_stream("aac", rate=16000)
        for n in range(20):
            chunk = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            chunk.sample_rate, chunk.pts = 16000, n * 1024
            for packet in sound.encode(chunk):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@dataclass(frozen=True)
class Clips:
    """The synthetic clips, written once per test session."""

    root: Path

    def path(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="session")
def clips(clip_dir: Path) -> Clips:
    d = clip_dir
    # 5 s at 10 fps, frames 0..49, constant frame rate.
    write_clip(d / "cfr.mp4", range(50))
    # The same content in other containers and codecs.
    write_clip(d / "cfr.mkv", range(50))
    write_clip(d / "cfr.avi", range(50), codec="mpeg4")
    # Variable frame rate: frame times in milliseconds.
    write_clip(d / "vfr.mkv", [0, 50, 300, 310, 1200, 2500, 2600, 4000], rate=1000)
    # With an audio track.
    write_clip(d / "audio.mp4", range(30), audio=True)
    # Rotated 90 degrees by display-matrix metadata, and an odd size (4:4:4 allows odd sizes).
    write_clip(d / "rotated.mp4", range(20), rotation=90)
    write_clip(d / "odd.mkv", range(20), size=(67, 37), pix_fmt="yuv444p")
    # 1 s clip for loop mode.
    write_clip(d / "short.mp4", range(10))
    # Damaged files.
    write_clip(d / "faststart.mp4", range(100), container_options={"movflags": "faststart"})
    data = (d / "faststart.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])
    data = (d / "cfr.mp4").read_bytes()  # moov at the end: the cut removes the index
    (d / "no_index.mp4").write_bytes(data[: len(data) // 2])
    (d / "junk.mp4").write_bytes(b"this is not a video file\n" * 200)
    (d / "empty.mp4").write_bytes(b"")
    write_audio_only(d / "audio_only.m4a")
    # An AVI whose fourcc no decoder knows: an unsupported codec.
    data = (d / "cfr.avi").read_bytes()
    assert data.count(b"FMP4") >= 1
    (d / "unknown_codec.avi").write_bytes(data.replace(b"FMP4", b"QZQZ"))
    return Clips(d)


@pytest.fixture
def shared_clip() -> Path:
    if not SHARED_CLIP.is_file():
        pytest.skip(f"the shared test clip is absent ({SHARED_CLIP})")
    return SHARED_CLIP


# --- RTSP ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rtsp_clip(clip_dir: Path) -> Path:
    """The shared clip where present, else a generated 60 s H.264 MP4 of the same kind."""
    if SHARED_CLIP.is_file():
        return SHARED_CLIP
    return write_clip(clip_dir / "rtsp_fallback.mp4", range(600), size=(320, 240))


@pytest.fixture
def rtsp_server(rtsp_clip: Path) -> Iterator[RtspServer]:
    problem = gst_rtsp_problem()
    if problem:
        pytest.skip(problem)
    server = RtspServer(rtsp_clip)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def free_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
