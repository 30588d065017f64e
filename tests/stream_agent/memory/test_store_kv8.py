"""``memory.store_dtype: int8``: the block store keeps K/V in the 8-bit codec (stream_agent.memory
.kv8, per-channel scales). What RAM holds is what disk returns, bit for bit; both are within the
codec's bound of the encoded K/V; restarts answer the same; the files are about half of float16's;
a store keeps the dtype it was created with when reopened with another."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from stream_agent.memory import AnswerFinal, Memory
from stream_agent.memory.answer import Candidate
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import DecodeOptions, VisualTokens

from .conftest import feed, stamp

QUESTION = "What is the person doing?"


def _answer(memory: Memory) -> AnswerFinal:
    events = list(memory.answer(QUESTION, options=DecodeOptions(max_new_tokens=6)))
    final = events[-1]
    assert isinstance(final, AnswerFinal)
    return final


def _bound(x: torch.Tensor) -> torch.Tensor:
    """Per value: half a per-channel scale (max over the tokens / 127) plus float16 rounding."""
    scale = x.abs().amax(dim=1, keepdim=True) / 127
    return scale * 0.5 * 1.001 + x.abs() * 2.0**-10 + 1e-7


def test_int8_blocks_round_trip_within_the_codecs_bound(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, store_dtype="int8", window_tokens=10_000)
    assert memory.store.kv8 and memory.store.dtype == torch.float16
    encoded = []
    for i, tokens in enumerate(frame_tokens[:3]):
        memory.append_step("cam", tokens, stamp(i))
        window = memory._streams["cam"].window
        assert window is not None
        slots = window.live_slots()[-len(tokens) :]
        layers = range(memory.store.layers)
        encoded.append(
            [
                (
                    window.cache.layer(j).keys[0].index_select(1, slots),
                    window.cache.layer(j).values[0].index_select(1, slots),
                )
                for j in layers
            ]
        )
    state = memory._streams["cam"]
    for meta, per_layer in zip(state.blocks, encoded, strict=True):
        cand = Candidate(state.stream_id, meta)
        for layer, (keys, values) in enumerate(per_layer):
            from_ram = memory._load(cand, layer)
            from_disk = memory.store.read_layers(meta, [layer])[layer]
            assert torch.equal(from_ram[0], from_disk[0]) and torch.equal(from_ram[1], from_disk[1])
            assert from_disk[0].dtype == torch.float16
            for got, want in ((from_disk[0], keys), (from_disk[1], values)):
                error = (got.float() - want.float()).abs()
                assert bool((error <= _bound(want.float())).all()), float(error.max())


def test_int8_store_is_about_half_of_float16(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    sizes = {}
    for dtype in ("float16", "int8"):
        memory = make_memory(llava, tmp_path / dtype, store_dtype=dtype)
        feed(memory, llava, frame_tokens)
        sizes[dtype] = memory.store.disk_bytes(memory._streams["cam"].stream_id)
        memory.close()
    assert sizes["int8"] < 0.75 * sizes["float16"], sizes


def test_int8_restart_answers_the_same(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    store = tmp_path / "kv8"
    options = {"store_dtype": "int8", "window_tokens": 48, "top_k": 3, "recent_blocks": 1}
    first = make_memory(llava, store, **options)
    feed(first, llava, frame_tokens)
    before = _answer(first)
    first.close()
    second = make_memory(llava, store, **options)
    assert second.status()[0].blocks == len(frame_tokens)
    after = _answer(second)
    assert after.token_ids == before.token_ids and after.evidence == before.evidence


@pytest.mark.parametrize(("written", "reopened"), [("int8", "float16"), ("float16", "int8")])
def test_a_store_keeps_its_dtype_when_reopened_with_another(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    written: str,
    reopened: str,
) -> None:
    store = tmp_path / "store"
    first = make_memory(llava, store, store_dtype=written)
    feed(first, llava, frame_tokens[:3])
    meta = first._streams["cam"].blocks[0]
    kept = first.store.read_layers(meta, [0])[0]
    first.close()
    with caplog.at_level(logging.WARNING, logger="stream_agent.memory.store"):
        second = make_memory(llava, store, store_dtype=reopened)
    assert f"keeps blocks in {written}" in caplog.text
    assert second.store.kv8 == (written == "int8")
    again = second.store.read_layers(second._streams["cam"].blocks[0], [0])[0]
    assert torch.equal(again[0], kept[0]) and torch.equal(again[1], kept[1])
    feed(second, llava, frame_tokens[3:5], first=3)  # and it goes on writing in its own dtype
    assert second.status()[0].blocks == 5
    second.close()
