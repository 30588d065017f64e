"""Fixtures of the memory tests: a tiny LLaVA-OneVision adapter and frames' visual tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_agent.memory import FrameStamp, Memory, MemoryOptions
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import VisualTokens

WALL0 = 1_700_000_000.0


@pytest.fixture(scope="session")
def llava() -> VideoLLM:
    from stream_agent.models.testing import build_test_adapter

    return build_test_adapter("llava_onevision", seed=0)


@pytest.fixture(scope="session")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(10)]


@pytest.fixture(scope="session")
def frame_tokens(llava: VideoLLM, frames: list[np.ndarray]) -> list[VisualTokens]:
    return [llava.encode_frames([f])[0] for f in frames]


def stamp(i: int) -> FrameStamp:
    return FrameStamp(seq=i, pts=float(i), wall=WALL0 + i)


@pytest.fixture
def make_memory(tmp_path: Path) -> Callable[..., Memory]:
    """``make_memory(model, **options)`` -> a Memory in a fresh (or given) store folder."""
    made: list[Memory] = []

    def make(model: VideoLLM, store: Path | None = None, **options: object) -> Memory:
        settings: dict[str, object] = {"fsync": False, **options}
        memory = Memory(model, MemoryOptions(store_dir=store or tmp_path / "store", **settings))  # type: ignore[arg-type]
        made.append(memory)
        return memory

    yield make
    for memory in made:
        memory.close()


def feed(
    memory: Memory, model: VideoLLM, tokens: list[VisualTokens], stream: str = "cam", first: int = 0
) -> None:
    for i, t in enumerate(tokens):
        memory.append_step(stream, t, stamp(first + i))


def random_keep(count: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:count].sort().values
