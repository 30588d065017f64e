"""``stream-agent ask-file`` on a generated clip and a tiny checkpoint, against the in-process
reference answer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from ingest import SourceSpec, probe_source_sync
from stream_agent.cli import main
from stream_agent.errors import ModelError, SourceError
from stream_agent.models import DecodeOptions, load_model
from stream_agent.models.reference import answer_video, uniform_indices

QUESTION = "What moves in the video?"


def _write_clip(path: Path, container_format: str) -> None:
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(30):
            image = np.full((64, 96, 3), 30, dtype=np.uint8)
            image[20:40, 2 * i : 2 * i + 20] = 235
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-second 10 fps H.264 clip of a white square crossing a dark background."""
    path = tmp_path_factory.mktemp("clip") / "square.mp4"
    _write_clip(path, "mp4")
    return path


def _sampled(path: Path, count: int) -> list[np.ndarray]:
    """The frames ask-file should use: the first at or after each ``k * duration / count``."""
    duration = probe_source_sync(SourceSpec.parse(str(path))).duration_s
    assert duration is not None and duration > 0
    with av.open(str(path)) as container:
        decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    chosen = []
    for k in range(count):
        due = k * duration / count - 1e-9
        chosen.append(next(image for t, image in decoded if t is not None and t >= due))
    return chosen


def test_ask_file_streams_the_reference_answer(
    clip: Path, tiny_model_dir: Callable[[str], Path]
) -> None:
    folder = tiny_model_dir("llava_onevision")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_agent",
            "ask-file",
            str(clip),
            QUESTION,
            "--model",
            str(folder),
            "--frames",
            "4",
            "--max-new-tokens",
            "10",
        ],
        capture_output=True,
        timeout=240,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr
    assert "encoding frames" in stderr and "4/4" in stderr
    expected = answer_video(
        load_model(folder), _sampled(clip, 4), QUESTION, options=DecodeOptions(max_new_tokens=10)
    )
    assert len(expected.token_ids) > 0
    assert proc.stdout.decode("utf-8") == expected.text + "\n"


def test_ask_file_counts_frames_of_a_file_without_duration(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A raw H.264 stream declares no duration: frames are counted, then evenly spaced ones used."""
    raw = tmp_path / "square.h264"
    _write_clip(raw, "h264")
    assert probe_source_sync(SourceSpec.parse(str(raw))).duration_s is None
    folder = tiny_model_dir("llava_onevision")
    code = main(
        [
            "ask-file",
            str(raw),
            QUESTION,
            "--model",
            str(folder),
            "--frames",
            "4",
            "--max-new-tokens",
            "6",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with av.open(str(raw)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 30
    chosen = [decoded[i] for i in uniform_indices(30, 4)]
    expected = answer_video(
        load_model(folder), chosen, QUESTION, options=DecodeOptions(max_new_tokens=6)
    )
    assert captured.out == expected.text + "\n"


def test_ask_file_errors_name_the_problem(
    clip: Path,
    tiny_model_dir: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = str(tiny_model_dir("llava_onevision"))
    assert (
        main(["ask-file", str(tmp_path / "none.mp4"), "q", "--model", folder])
        == SourceError.exit_code
    )
    assert "no video file" in capsys.readouterr().err
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    assert main(["ask-file", str(not_video), "q", "--model", folder]) == SourceError.exit_code
    assert "not a video file" in capsys.readouterr().err
    assert main(["ask-file", str(clip), "q", "--model", str(tmp_path)]) == ModelError.exit_code
    assert "no config.json" in capsys.readouterr().err
