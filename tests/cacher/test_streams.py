"""Several streams at once: independent state, reset on reconnect, bounded and reported memory."""

from __future__ import annotations

import pytest
import torch

from cacher import (
    CacherConfig,
    CacherRegistry,
    ConfigurationError,
    StreamCacher,
    reference_bytes,
    stack_hidden,
)
from tests.cacher.tiny import background, embed, make_layers, make_patches, with_square

GRID = (6, 6)


def _clip(seed: int, count: int = 4) -> list[torch.Tensor]:
    patches = make_patches(GRID)
    bg = background(GRID, seed=seed)
    return [embed(patches, with_square(bg, 3 * i, 2 * i, 6)) for i in range(count)]


@pytest.mark.parametrize("mode", ["paper", "adaptive"])
@torch.no_grad()
def test_interleaved_streams_equal_each_stream_alone(mode: str) -> None:
    layers = make_layers()
    config = CacherConfig(mode=mode)  # type: ignore[arg-type]
    registry = CacherRegistry(layers, config)
    clips = {"door": _clip(1), "yard": _clip(2)}
    together: dict[str, list[torch.Tensor]] = {"door": [], "yard": []}
    for i in range(4):
        for stream in ("yard", "door"):
            together[stream].append(registry.encode(stream, clips[stream][i]).hidden_states[0])
    for stream, frames in clips.items():
        alone = StreamCacher(layers, config)
        for x, got in zip(frames, together[stream], strict=True):
            assert torch.equal(alone.encode(x).hidden_states[0], got)
    assert registry.streams == ("yard", "door")  # least recently used first
    sizes = registry.state_bytes()
    assert set(sizes) == {"door", "yard"} and registry.total_bytes == sum(sizes.values()) > 0


@torch.no_grad()
def test_reset_drops_one_stream_only() -> None:
    registry = CacherRegistry(make_layers(), CacherConfig())
    registry.encode("a", _clip(1)[0])
    registry.encode("b", _clip(2)[0])
    registry.reset("a")
    registry.reset("unknown")  # ignored
    assert registry.state_bytes()["a"] == 0
    assert registry.encode("a", _clip(1)[1]).stats.refresh_reason == "first"
    assert registry.encode("b", _clip(2)[1]).stats.kind == "selective"
    assert registry.get("a").counters.resets == 1
    registry.remove("a")
    assert registry.streams == ("b",)


@torch.no_grad()
def test_the_registry_is_bounded_and_evicts_the_least_recent_stream() -> None:
    registry = CacherRegistry(make_layers(), CacherConfig(), max_streams=2)
    registry.encode("a", _clip(1)[0])
    registry.encode("b", _clip(2)[0])
    registry.encode("a", _clip(1)[1])  # a is now the most recent
    registry.encode("c", _clip(3)[0])
    assert registry.streams == ("a", "c") and registry.evictions == 1
    assert registry.encode("b", _clip(2)[1]).stats.refresh_reason == "first"
    assert registry.evictions == 2
    with pytest.raises(ConfigurationError, match="max_streams"):
        CacherRegistry(make_layers(), CacherConfig(), max_streams=0)


@pytest.mark.parametrize("mode", ["paper", "adaptive"])
@torch.no_grad()
def test_state_bytes_are_known_before_the_first_frame(mode: str) -> None:
    layers = make_layers()
    cacher = StreamCacher(layers, CacherConfig(mode=mode), keep=(2, 3))  # type: ignore[arg-type]
    expected = cacher.state_bytes_for(36)
    adaptive = mode == "adaptive"
    assert expected == reference_bytes(
        layers,
        36,
        compute_dtype=torch.float32,
        storage_dtype=torch.float32,
        kept=2 if adaptive else 0,
        previous=adaptive,
    )
    for x in _clip(1):
        cacher.encode(x)
        assert cacher.state_bytes == expected  # fixed by the encoder and the token count


@torch.no_grad()
def test_encode_many_and_stack_hidden_give_the_head_its_input() -> None:
    layers = make_layers()
    cacher = StreamCacher(layers, CacherConfig(mode="paper"), keep=(1, -1))
    frames = torch.cat(_clip(1, 3))
    outs = cacher.encode_many(frames)
    assert [o.stats.index for o in outs] == [0, 1, 2]
    stacked = stack_hidden(outs)
    assert len(stacked) == 2 and stacked[1].shape == (3, 36, 32)
    assert torch.equal(stacked[1][2], outs[2].hidden_states[1][0])
    assert cacher.counters.frames == 3 and cacher.counters.selective_frames == 1
    assert 0 < cacher.counters.recomputed_share < 1
