"""The pipeline's stages module on its own: the config sections mapped onto the stage packages'
settings, one camera's vision chain over tiny real checkpoints, and the memory's answers as the
engine takes them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import cacher
import pruner
from ingest.records import Frame
from stream_agent.answers import AnswerDelta, AnswerFinal
from stream_agent.config import CacherConfig, MemoryConfig, PrunerConfig
from stream_agent.errors import ConfigError
from stream_agent.memory import MemoryOptions, StoreError
from stream_agent.models import VideoLLM
from stream_agent.models.records import DecodeOptions
from stream_agent.models.testing import build_test_adapter
from stream_agent.pipeline.stages import (
    VisionChain,
    answer_events,
    append_blocks,
    cacher_settings,
    chain_settings,
    memory_status,
    open_memory,
    pruner_settings,
)

from .pictures import moving_square


@pytest.fixture(scope="module")
def qwen() -> VideoLLM:
    return build_test_adapter("qwen2_vl")


image = moving_square


def frames(count: int, *, start: int = 0) -> list[Frame]:
    now = time.time()
    return [
        Frame("dock", i, float(i), now - (count - i), image(i)) for i in range(start, start + count)
    ]


# --- settings -----------------------------------------------------------------------------------


def test_cacher_settings_follow_the_section_and_the_family(llava: VideoLLM, qwen: VideoLLM) -> None:
    plain = cacher_settings(CacherConfig(), llava)
    assert (plain.mode, plain.cache_interval, plain.update_token_ratio) == ("paper", 2, 0.25)
    assert (plain.group_size, plain.group_layout, plain.cache_dtype) == (1, "consecutive", "same")
    windowed = cacher_settings(CacherConfig(method="adaptive", cache_half_precision=True), qwen)
    assert (windowed.mode, windowed.cache_dtype) == ("adaptive", "float16")
    assert (windowed.group_size, windowed.group_layout) == (4, "window")
    assert cacher_settings(CacherConfig(method="none"), llava).mode == "off"


def test_pruner_settings_carry_the_budget() -> None:
    assert pruner_settings(PrunerConfig()).budget == pruner.Budget(tokens=64)
    by_ratio = pruner_settings(PrunerConfig(method="dycoke", keep_ratio=0.3))
    assert by_ratio.method == "dycoke" and by_ratio.budget == pruner.Budget(ratio=0.3)
    everything = pruner_settings(PrunerConfig(method="none", tokens_per_frame=None))
    assert everything.budget == pruner.Budget(ratio=1.0)


def test_settings_the_stages_reject_are_config_errors(llava: VideoLLM) -> None:
    settings = chain_settings(CacherConfig(), PrunerConfig(), llava)
    assert isinstance(settings.cacher, cacher.CacherConfig)
    assert isinstance(settings.pruner, pruner.PrunerConfig)
    # each section is valid on its own; the pruner refuses the combination
    refused = PrunerConfig(method="dycoke", keep_ratio=0.1)
    with pytest.raises(ConfigError, match="do not work together: dycoke keeps frame 0"):
        chain_settings(CacherConfig(), refused, llava)


def test_a_memory_folder_that_cannot_be_made_is_a_store_error(
    llava: VideoLLM, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    options = MemoryOptions.from_config(MemoryConfig(store_dir=blocker / "memory"))
    with pytest.raises(StoreError, match=r"choose another memory\.store_dir"):
        open_memory(llava, options)


# --- the vision chain ---------------------------------------------------------------------------


def test_the_chain_turns_frames_into_stamped_blocks(llava: VideoLLM) -> None:
    chain = VisionChain("dock", llava, chain_settings(CacherConfig(), PrunerConfig(), llava))
    assert chain.stats().cacher_reuse_share is None and chain.stats().pruner_kept_share is None
    given = frames(4)
    blocks = chain.add(given)
    assert [b.stamp.seq for b in blocks] == [0, 1, 2, 3]
    assert [b.stamp.pts for b in blocks] == [0.0, 1.0, 2.0, 3.0]
    assert [b.stamp.wall for b in blocks] == [f.wall_time for f in given]
    tokens = llava.vision_spec.tokens_per_step
    assert all(b.tokens.embeds.shape[0] == tokens for b in blocks)
    assert all(b.keep.numel() == min(64, tokens) for b in blocks)
    assert [b.seconds_per_step for b in blocks] == [1.0, 1.0, 1.0, 1.0]
    stats = chain.stats()
    assert stats.cacher_reuse_share is not None and 0 < stats.cacher_reuse_share < 1
    assert stats.pruner_kept_share == 1.0 and stats.resets == 0


def test_two_frame_steps_wait_for_their_partner_and_a_reset_forgets_them(qwen: VideoLLM) -> None:
    assert qwen.vision_spec.frames_per_step == 2
    chain = VisionChain("dock", qwen, chain_settings(CacherConfig(), PrunerConfig(), qwen))
    given = frames(3)
    blocks = chain.add(given)
    assert len(blocks) == 1
    stamp = blocks[0].stamp
    assert (stamp.seq, stamp.pts, stamp.pts_end) == (0, 0.0, 1.0)
    assert chain.reset() == []  # the lone third frame is dropped, not encoded
    assert chain.stats().resets == 1
    after = chain.add(frames(2, start=10))
    assert [b.stamp.seq for b in after] == [10]
    assert after[0].seconds_per_step == 2.0  # a new session: no step before it to measure from


def test_blocks_reach_the_memory_and_answers_become_engine_events(
    llava: VideoLLM, tmp_path: Path
) -> None:
    memory = open_memory(llava, MemoryOptions.from_config(MemoryConfig(store_dir=tmp_path / "m")))
    try:
        chain = VisionChain("dock", llava, chain_settings(CacherConfig(), PrunerConfig(), llava))
        append_blocks(memory, "dock", chain.add(frames(3)))
        (status,) = memory_status(memory)
        assert status.stream == "dock" and status.blocks == 3
        events = list(
            answer_events(
                memory,
                "What moved?",
                camera="dock",
                since=None,
                until=None,
                options=DecodeOptions(max_new_tokens=4),
                cancel=threading.Event(),
            )
        )
        *deltas, done = events
        assert all(isinstance(d, AnswerDelta) and d.text for d in deltas)
        assert isinstance(done, AnswerFinal) and done.finish_reason in ("stop", "length")
        assert done.text == "".join(d.text for d in deltas if isinstance(d, AnswerDelta))
        assert 1 <= done.tokens <= 4
        assert done.evidence and {m.camera for m in done.evidence} == {"dock"}
        cancelled = threading.Event()
        cancelled.set()
        quiet = answer_events(
            memory,
            "What moved?",
            camera=None,
            since=None,
            until=None,
            options=DecodeOptions(max_new_tokens=4),
            cancel=cancelled,
        )
        # a cancelled answer ends at once, with its final saying so
        *_, last = quiet
        assert isinstance(last, AnswerFinal) and last.finish_reason == "cancelled"
    finally:
        memory.close()
