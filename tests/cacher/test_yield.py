"""The preemption hook: ``yield_point`` is called between layer groups of a frame's encode, the
expected number of times, and changes nothing in the result."""

from __future__ import annotations

import pytest
import torch

from cacher import AdaptiveOptions, CacherConfig, CacherRegistry, EncoderError, StreamCacher
from tests.cacher.tiny import background, embed, make_layers, make_patches, with_square

GRID = (6, 6)


def _frames() -> list[torch.Tensor]:
    patches = make_patches(GRID)
    bg = background(GRID)
    return [
        embed(patches, bg),  # reference
        embed(patches, bg),  # reused whole: no layer runs, no yield
        embed(patches, with_square(bg, 4, 4, 5)),  # selective (adaptive) / full
        embed(patches, background(GRID, seed=7)),  # scene change: full
    ]


@pytest.mark.parametrize("mode", ["adaptive", "paper", "off"])
@pytest.mark.parametrize(("layers", "every", "calls"), [(7, 2, 3), (7, 3, 2), (6, 3, 1), (3, 4, 0)])
@torch.no_grad()
def test_yield_point_is_called_between_groups_and_changes_nothing(
    mode: str, layers: int, every: int, calls: int
) -> None:
    records = make_layers(layers, seed=3)
    config = CacherConfig(
        mode=mode,  # type: ignore[arg-type]
        yield_every=every,
        adaptive=AdaptiveOptions(max_ratio=0.5),
    )
    plain = StreamCacher(records, config, keep=(1, -1))
    hooked = StreamCacher(records, config, keep=(1, -1))
    seen: list[int] = []
    for frame in _frames():
        seen.clear()
        want = plain.encode(frame.clone())
        got = hooked.encode(frame.clone(), yield_point=lambda: seen.append(1))
        assert got.stats.kind == want.stats.kind
        expected = 0 if got.stats.kind == "reused" else calls
        assert len(seen) == expected, (mode, got.stats.kind)
        for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
            assert torch.equal(a, b)
    assert hooked.counters == plain.counters


@torch.no_grad()
def test_a_question_served_inside_the_callback_leaves_the_frame_intact() -> None:
    """The callback may run other model work on the same thread (here: a full encode of another
    stream with the same layers, as a question's prefill would use the LLM)."""
    records = make_layers(5, seed=4)
    config = CacherConfig(mode="adaptive", yield_every=1)
    registry = CacherRegistry(records, config, keep=(-1,))
    frames = _frames()
    want = StreamCacher(records, config).encode(frames[0]).hidden_states[0]
    side: list[torch.Tensor] = []

    def serve_question() -> None:
        side.append(registry.encode("other", frames[3]).hidden_states[0])

    got = registry.encode("door", frames[0], yield_point=serve_question).hidden_states[0]
    assert len(side) == 4 and torch.equal(got, want)


@torch.no_grad()
def test_nested_encode_on_the_same_stream_is_refused_and_a_raising_callback_drops_the_frame() -> (
    None
):
    records = make_layers(4, seed=5)
    cacher = StreamCacher(records, CacherConfig(mode="adaptive", yield_every=1))
    frames = _frames()

    def nested() -> None:
        cacher.encode(frames[1])

    with pytest.raises(EncoderError, match="already encoding"):
        cacher.encode(frames[0], yield_point=nested)
    assert not cacher.has_reference

    class Stop(Exception):
        pass

    def stop() -> None:
        raise Stop

    cacher.encode(frames[0])
    assert cacher.has_reference
    with pytest.raises(Stop):
        cacher.encode(frames[2], yield_point=stop)
    assert not cacher.has_reference  # abandoned half-way: the next frame is a new reference
    assert cacher.encode(frames[2]).stats.refresh_reason == "first"


def test_yield_every_is_validated() -> None:
    from cacher import ConfigurationError

    with pytest.raises(ConfigurationError, match="yield_every"):
        CacherConfig(yield_every=0)
