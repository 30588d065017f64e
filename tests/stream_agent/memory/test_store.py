"""The tiers: RAM and disk round trips are exact, restarts reload, crashes lose at most the block
being written, and eviction keeps to the retention horizon and the disk budget."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from stream_agent.memory import AnswerFinal, Memory, StoreMismatchError
from stream_agent.memory.answer import Candidate
from stream_agent.memory.store import INDEX_FILE
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import DecodeOptions, VisualTokens

from .conftest import feed, stamp

QUESTION = "What is the person doing?"


def _answer(memory: Memory, **kwargs: object) -> AnswerFinal:
    events = list(memory.answer(QUESTION, options=DecodeOptions(max_new_tokens=6), **kwargs))  # type: ignore[arg-type]
    final = events[-1]
    assert isinstance(final, AnswerFinal)
    return final


def _segments(store: Path) -> list[Path]:
    return sorted(store.glob("streams/*/seg-*.kv"))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_offload_round_trip_is_exact(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    dtype: str,
) -> None:
    """What comes back from RAM and from disk is the encoded K/V in the store dtype, bit for bit
    (float32: the encoded K/V itself)."""
    memory = make_memory(llava, store_dtype=dtype, window_tokens=10_000)
    window_copies = []
    for i, tokens in enumerate(frame_tokens[:3]):
        memory.append_step("cam", tokens, stamp(i))
        window = memory._streams["cam"].window
        assert window is not None
        slots = window.live_slots()[-len(tokens) :]
        window_copies.append(
            torch.stack([window.cache.layer(j).keys[0].index_select(1, slots) for j in range(2)])
        )
    state = memory._streams["cam"]
    for meta, encoded in zip(state.blocks, window_copies, strict=True):
        cand = Candidate(state.stream_id, meta)
        for layer in range(2):
            from_ram = memory._load(cand, layer)
            from_disk = memory.store.read_layers(meta, [layer])[layer]
            assert torch.equal(from_ram[0], from_disk[0]) and torch.equal(from_ram[1], from_disk[1])
            expected = encoded[layer].to(getattr(torch, dtype))
            assert torch.equal(from_disk[0], expected)


def test_restart_answers_the_same(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    store = tmp_path / "restart"
    first = make_memory(llava, store, window_tokens=48, top_k=3, recent_blocks=1)
    feed(first, llava, frame_tokens)
    _, before_prepared = first.prepare(QUESTION)
    before = _answer(first)
    first.close()
    second = make_memory(llava, store, window_tokens=48, top_k=3, recent_blocks=1)
    assert second.streams == ("cam",)
    assert second.status()[0].blocks == len(frame_tokens)
    _, after_prepared = second.prepare(QUESTION)
    after = _answer(second)
    assert after.token_ids == before.token_ids
    assert after.evidence == before.evidence
    assert torch.equal(after_prepared.logits, before_prepared.logits)
    # encoding continues after the restart, from a window rebuilt out of the store
    feed(second, llava, frame_tokens[:2], first=len(frame_tokens))
    assert second.status()[0].blocks == len(frame_tokens) + 2
    assert second.status()[0].window_tokens == 48


def test_truncated_last_block_is_dropped(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    store = tmp_path / "cut"
    memory = make_memory(llava, store)
    feed(memory, llava, frame_tokens[:5])
    memory.close()
    (segment,) = _segments(store)
    size = segment.stat().st_size
    with open(segment, "r+b") as handle:
        handle.truncate(size - 100)
    reopened = make_memory(llava, store)
    (status,) = reopened.status()
    assert status.blocks == 4
    assert [m.seq for m in reopened._streams["cam"].blocks] == [0, 1, 2, 3]
    with sqlite3.connect(store / INDEX_FILE) as db:
        assert db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == 4
    # the cut block's bytes are gone and new blocks append cleanly after the kept ones
    feed(reopened, llava, frame_tokens[5:7], first=5)
    assert reopened.status()[0].blocks == 6
    assert _answer(reopened).evidence


def test_corrupt_last_block_and_unindexed_tail(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    """A flipped byte in the newest block drops it; bytes no row points to (a crash mid-write)
    are cut off."""
    store = tmp_path / "flip"
    memory = make_memory(llava, store)
    feed(memory, llava, frame_tokens[:3])
    memory.close()
    (segment,) = _segments(store)
    data = bytearray(segment.read_bytes())
    data[-10] ^= 0xFF
    segment.write_bytes(bytes(data) + b"partial block that never got its index row")
    reopened = make_memory(llava, store)
    assert [m.seq for m in reopened._streams["cam"].blocks] == [0, 1]
    last = reopened._streams["cam"].blocks[-1]
    assert segment.stat().st_size == last.offset + last.length


def test_store_of_another_model_is_refused(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    from stream_agent.models.testing import build_test_adapter

    store = tmp_path / "other"
    memory = make_memory(llava, store)
    feed(memory, llava, frame_tokens[:1])
    memory.close()
    other = build_test_adapter("llava_onevision", seed=1)
    with pytest.raises(StoreMismatchError, match="another model"):
        make_memory(other, store)


def test_retention_evicts_oldest_but_keeps_recent(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, retention_s=3.5, recent_blocks=2)
    feed(memory, llava, frame_tokens)  # wall times 0..9 s apart
    blocks = memory._streams["cam"].blocks
    assert [m.seq for m in blocks] == [6, 7, 8, 9]
    evidence = _answer(memory).evidence
    assert {e.seq for e in evidence} <= {6, 7, 8, 9}


def test_disk_budget_deletes_whole_old_segments(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    store = tmp_path / "budget"
    memory = make_memory(llava, store, store_dtype="float32", segment_bytes=1)
    feed(memory, llava, frame_tokens[:1])
    block_bytes = memory.status()[0].disk_bytes
    memory.close()
    budget = 3 * block_bytes
    memory = make_memory(
        llava,
        tmp_path / "budget2",
        store_dtype="float32",
        segment_bytes=1,
        disk_budget_bytes=budget,
        recent_blocks=1,
    )
    feed(memory, llava, frame_tokens)
    (status,) = memory.status()
    assert status.disk_bytes <= budget
    assert status.blocks == 3
    assert len(_segments(tmp_path / "budget2")) == 3
    assert [m.seq for m in memory._streams["cam"].blocks] == [7, 8, 9]
    assert memory.disk_bytes > status.disk_bytes  # plus the index


def test_a_budget_under_one_segment_keeps_history(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    """A disk budget smaller than the (default, 64 MiB) segment size: the segment being
    written cannot be freed, so segments are sized to a share of the budget, and eviction
    frees old segments instead of cutting the stream down to its recent blocks on every
    append."""
    memory = make_memory(llava, tmp_path / "one", store_dtype="float32")
    feed(memory, llava, frame_tokens[:1])
    block_bytes = memory.status()[0].disk_bytes
    memory.close()
    budget = 6 * block_bytes
    memory = make_memory(
        llava, tmp_path / "small", store_dtype="float32", disk_budget_bytes=budget, recent_blocks=1
    )
    feed(memory, llava, frame_tokens)
    (status,) = memory.status()
    assert status.disk_bytes <= budget
    assert [m.seq for m in memory._streams["cam"].blocks] == [4, 5, 6, 7, 8, 9]


def test_retention_ages_a_camera_that_went_quiet(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    """Retention runs against the newest moment of any stream: a camera that stopped
    delivering keeps only its recent blocks once the others have moved on."""
    memory = make_memory(llava, retention_s=3.5, recent_blocks=1)
    feed(memory, llava, frame_tokens[:3], stream="quiet")  # wall 0..2 s
    feed(memory, llava, frame_tokens[3:7], stream="busy", first=10)  # wall 10..13 s
    assert [m.seq for m in memory._streams["quiet"].blocks] == [2]
    assert [m.seq for m in memory._streams["busy"].blocks] == [10, 11, 12, 13]


def test_a_corrupt_block_in_the_middle_is_dropped_alone(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    """A block whose bytes rot on disk is found by the question that reads it: that block is
    dropped and the question answered from the others."""
    store = tmp_path / "rot"
    memory = make_memory(llava, store, ram_budget_bytes=0, top_k=10, recent_blocks=1)
    feed(memory, llava, frame_tokens[:5])
    bad = memory._streams["cam"].blocks[2]
    (segment,) = _segments(store)
    with open(segment, "r+b") as handle:
        handle.seek(bad.offset + bad.length - 8)
        handle.write(b"\xff" * 8)
    final = _answer(memory)
    assert [m.seq for m in memory._streams["cam"].blocks] == [0, 1, 3, 4]
    assert {e.seq for e in final.evidence} == {0, 1, 3, 4}
