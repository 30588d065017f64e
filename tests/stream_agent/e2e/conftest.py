"""Fixtures of the end-to-end tests: the tiny model, generated clips, the shared clip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import SHARED_CLIP, write_clip


@pytest.fixture(scope="session")
def tiny_llava(tiny_model_dir: Callable[[str], Path]) -> Path:
    """The tiny LLaVA-OneVision checkpoint (random weights: its answers are noise)."""
    return tiny_model_dir("llava_onevision")


@pytest.fixture(scope="session")
def e2e_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-clips")


@pytest.fixture(scope="session")
def short_clip(e2e_clips: Path) -> Path:
    """40 s of a moving square at 5 fps, 160x120: enough to replay live for a test."""
    return write_clip(e2e_clips / "short.mp4", 40)


@pytest.fixture(scope="session")
def long_clip(e2e_clips: Path) -> Path:
    """120 s of the same, for the RTSP server (it serves the file in real time)."""
    return write_clip(e2e_clips / "long.mp4", 120)


@pytest.fixture(scope="session")
def shared_clip() -> Path:
    if not SHARED_CLIP.is_file():
        pytest.skip(f"the shared test clip is absent ({SHARED_CLIP})")
    return SHARED_CLIP
