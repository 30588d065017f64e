"""DyCoke, HoliTom and METok in the answer path: with nothing pruned each is the uncompressed
answer path (every family), kept counts match the budgets, DyCoke re-selects only when its
attention pattern moves, and each works with every retrieval mode and a restarted memory."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stream_agent.memory import AnswerFinal, Memory, MemoryConfigError, MemoryOptions
from stream_agent.memory.compression import (
    Combined,
    DyCoke,
    HoliTom,
    METok,
    make_compressor,
    parse_compression,
)
from stream_agent.memory.compression.base import scaled_layer
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import DecodeOptions, VisualTokens

from .conftest import feed

QUESTION = "What happens at the door?"
OPTIONS = DecodeOptions(max_new_tokens=6, stop_ids=())

#: Each method (and a combination) with its pruning shares at 0.
UNPRUNED: dict[str, Any] = {
    "dycoke": {"method": "dycoke", "prune": 0.0},
    "holitom": {"method": "holitom", "prune": 0.0},
    "metok": {"method": "metok", "prune": 0.0, "non_key_prune": 0.0, "deep_prune": 0.0},
    "all": [
        {"method": "metok", "prune": 0.0, "non_key_prune": 0.0, "deep_prune": 0.0},
        {"method": "holitom", "prune": 0.0},
        {"method": "dycoke", "prune": 0.0},
    ],
}


def _answer(memory: Memory, **kwargs: Any) -> tuple[AnswerFinal, torch.Tensor, Any, Any]:
    answer_pass, prepared = memory.prepare(
        QUESTION, max_new_tokens=OPTIONS.max_new_tokens, **kwargs
    )
    steps = list(answer_pass.decode(prepared, OPTIONS))
    final = list(memory.answer(QUESTION, options=OPTIONS, **kwargs))[-1]
    assert isinstance(final, AnswerFinal)
    assert final.token_ids == tuple(s.token_id for s in steps)
    return final, prepared.logits, answer_pass, prepared


def _with(memory: Memory, compression: Any) -> Memory:
    memory.options = memory.options.with_changes(compression=compression)
    return memory


def _fill(model: VideoLLM, frames: list[np.ndarray], memory: Memory) -> None:
    for tokens in model.encode_frames(frames):
        feed(memory, model, [tokens], first=0)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen2_5_vl", "smolvlm"])
def test_with_nothing_pruned_each_method_is_the_uncompressed_path(
    family: str,
    llava: VideoLLM,
    frames: list[np.ndarray],
    make_memory: Callable[..., Memory],
) -> None:
    from stream_agent.models.testing import build_test_adapter

    model = llava if family == "llava_onevision" else build_test_adapter(family, seed=0)
    memory = make_memory(model, window_tokens=64, top_k=3, recent_blocks=1, store_dtype="float32")
    for i, tokens in enumerate(model.encode_frames(frames[:8])):
        feed(memory, model, [tokens], first=i)
    plain, plain_logits, _, _ = _answer(_with(memory, "none"))
    for name, setting in UNPRUNED.items():
        final, logits, answer_pass, _ = _answer(_with(memory, setting))
        assert final.token_ids == plain.token_ids, name
        assert final.evidence == plain.evidence, name
        torch.testing.assert_close(logits, plain_logits, rtol=0, atol=1e-4, msg=name)
        assert answer_pass.compressor.active


def _loaded(
    llava: VideoLLM, tokens: list[VisualTokens], make_memory: Callable[..., Memory], **kw: Any
) -> Memory:
    settings: dict[str, Any] = {"window_tokens": 48, "top_k": 4, "recent_blocks": 2, **kw}
    memory = make_memory(llava, **settings)
    feed(memory, llava, tokens)
    return memory


def _block_tokens(context: Any) -> int:
    return sum(b.slots.stop - b.slots.start for b in context.blocks)


def test_holitom_keeps_half_from_its_layer_on_and_merges(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = _loaded(llava, frame_tokens, make_memory, compression="holitom")
    _, _, answer_pass, prepared = _answer(memory)
    holitom = answer_pass.compressor
    assert isinstance(holitom, HoliTom)
    assert holitom.layer == scaled_layer(18, 28, 2) == 1
    kept, scored = holitom.kept_counts
    held0 = {b.key for b in prepared.contexts[0].blocks}  # what layer 0's attention scored
    n = sum(c.meta.tokens for c in prepared.selections[1] if c.key in held0)
    unscored = sum(c.meta.tokens for c in prepared.selections[1] if c.key not in held0)
    assert scored == n and kept == round(n * 0.5)
    assert _block_tokens(prepared.contexts[1]) == kept + unscored
    assert prepared.contexts[1].context_slots == memory.sink.tokens + kept + unscored
    # the merged tokens' values are no longer the stored ones
    context = prepared.contexts[1]
    stored = torch.cat(
        [
            memory.tiers.load(b.candidate, 1)[1][:, b.token_offsets()].float()
            for b in context.blocks
        ],
        dim=1,
    )
    held = context.cache.values[0, :, memory.sink.tokens : context.context_slots].float()
    assert not torch.allclose(held, stored)
    # without merging, they are
    plain = _with(memory, {"method": "holitom", "merge": False})
    _, _, _, prepared = _answer(plain)
    context = prepared.contexts[1]
    stored = torch.cat(
        [memory.tiers.load(b.candidate, 1)[1][:, b.token_offsets()] for b in context.blocks], 1
    )
    held = context.cache.values[0, :, memory.sink.tokens : context.context_slots]
    torch.testing.assert_close(held, stored.to(held.dtype))


def test_metok_quotas_per_event(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    setting = {
        "method": "metok",
        "prune": 0.5,
        "non_key_prune": 0.75,
        "deep_prune": 0.25,
        "key_events": 1,
        "layers": [1],
    }
    memory = _loaded(llava, frame_tokens, make_memory, compression=setting)
    _, _, answer_pass, prepared = _answer(memory)
    metok = answer_pass.compressor
    assert isinstance(metok, METok)
    held0 = {b.key for b in prepared.contexts[0].blocks}  # the blocks layer 0 scored
    held = [c for c in prepared.selections[1] if c.key in held0]
    events: list[list[Any]] = []
    for cand in held:
        if events and cand.meta.block_id == events[-1][-1].meta.block_id + 1:
            events[-1].append(cand)
        else:
            events.append([cand])

    def quota(n: int, drop: float) -> int:
        return max(1, math.ceil((1 - drop) * n))

    # one pruning layer, so it is also the last: key units (an event's first block, the key
    # event's rest) drop deep_prune (0.25), the others non_key_prune (0.75)
    expected = set()
    for key_event in range(len(events)):
        total = 0
        for e, event in enumerate(events):
            total += quota(event[0].meta.tokens, 0.25)
            rest = sum(c.meta.tokens for c in event[1:])
            if rest:
                total += quota(rest, 0.25 if e == key_event else 0.75)
        expected.add(total)
    kept, scored = metok.kept_counts[1]
    assert scored == sum(c.meta.tokens for c in held)
    assert kept in expected
    unscored = sum(c.meta.tokens for c in prepared.selections[1] if c.key not in held0)
    assert _block_tokens(prepared.contexts[1]) == kept + unscored


def test_metok_released_schedule_leaves_deep_layers_without_visual_tokens(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = _loaded(llava, frame_tokens, make_memory, compression="metok", top_k=20)
    _, _, answer_pass, prepared = _answer(memory)
    metok = answer_pass.compressor
    assert isinstance(metok, METok) and metok.layers == (1,)
    # layer 1 is first and last: key units (the best event, every event's first block) keep
    # nothing, the rest ceil(38%)
    context = prepared.contexts[1]
    kept, scored = metok.kept_counts[1]
    assert _block_tokens(context) == kept < scored
    assert any(b.slots.stop == b.slots.start for b in context.blocks)  # blocks left out


def test_dycoke_keeps_its_share_and_reselects_only_when_attention_moves(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = _loaded(llava, frame_tokens, make_memory, compression="dycoke")
    _, _, answer_pass, prepared = _answer(memory)
    dycoke = answer_pass.compressor
    assert isinstance(dycoke, DyCoke) and dycoke.layer == 1
    n = _block_tokens(prepared.contexts[0])
    assert dycoke.reselections[0] == 0
    assert all(kept == math.floor(0.3 * n) and count == n for kept, count in dycoke.kept_counts)
    # threshold -1: the pattern never "moves", one selection for the whole answer
    _with(memory, {"method": "dycoke", "threshold": -1.0})
    _, _, answer_pass, _ = _answer(memory)
    assert answer_pass.compressor.reselections == [0]
    # threshold 1: any change re-selects (random weights: the pattern changes every step)
    _with(memory, {"method": "dycoke", "threshold": 1.0})
    _, _, answer_pass, _ = _answer(memory)
    assert answer_pass.compressor.reselections == list(range(OPTIONS.max_new_tokens - 1))


def test_dycoke_reselection_follows_the_similarity_gate(tmp_path: Path) -> None:
    """Unit: the same attention twice keeps the selection; a moved one re-selects."""

    class Probe:
        def __init__(self, weights: torch.Tensor, context: Any) -> None:
            self._w = weights
            self.context = context

        def weights(self, rows: slice | None = None) -> torch.Tensor:
            return self._w

    from stream_agent.memory.compression.base import ContextBlock, LayerContext
    from stream_agent.memory.layout import BlockLayout
    from stream_agent.memory.records import BlockMeta, Candidate

    layout = BlockLayout("text", torch.zeros(1, 10, dtype=torch.long), 10, 0)
    meta = BlockMeta("cam", 0, 0, 0.0, 0.0, 0.0, 0.0, 10, 0, 0, 0, (), layout)
    block = ContextBlock(Candidate(1, meta), slice(2, 12), False)
    context = LayerContext(
        layer=0,
        step=0,
        cache=None,
        sink=slice(0, 2),
        blocks=(block,),
        context_slots=12,  # type: ignore[arg-type]
        rows=slice(12, 13),
        question_rows=slice(0, 1),
    )
    dycoke = DyCoke(parse_compression("dycoke")[0].settings, depth=2)  # type: ignore[arg-type]
    a = torch.zeros(1, 1, 13)
    a[0, 0, 2:12] = torch.arange(10.0)
    for step, weights in enumerate([a, a * 1.01, a.flip(-1)]):
        dycoke._score(Probe(weights, context), step)  # type: ignore[arg-type]
    assert dycoke.reselections == [0, 2]
    assert dycoke.kept_counts == [(3, 10), (3, 10)]


@pytest.mark.parametrize("retrieval", ["internal", "embedding", "hybrid"])
def test_every_method_with_every_retrieval_mode_and_a_restart(
    retrieval: str,
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    tmp_path: Path,
) -> None:
    combined = ["metok", "holitom", "dycoke"]
    store = tmp_path / f"store-{retrieval}"
    before = {}
    memory = make_memory(
        llava, store, window_tokens=48, top_k=4, recent_blocks=2, retrieval=retrieval
    )
    feed(memory, llava, frame_tokens)
    for setting in ["dycoke", "holitom", "metok", combined]:
        final, logits, answer_pass, _ = _answer(_with(memory, setting))
        assert len(final.token_ids) == OPTIONS.max_new_tokens
        if isinstance(setting, list):
            assert isinstance(answer_pass.compressor, Combined)
        before[str(setting)] = (final.token_ids, logits)
    memory.close()
    again = make_memory(
        llava, store, window_tokens=48, top_k=4, recent_blocks=2, retrieval=retrieval
    )
    for setting in ["dycoke", "holitom", "metok", combined]:
        final, logits, _, _ = _answer(_with(again, setting))
        tokens, first = before[str(setting)]
        assert final.token_ids == tokens
        torch.testing.assert_close(logits, first, rtol=0, atol=1e-5)


def test_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(MemoryConfigError, match=r"unknown memory\.compression dycoke settings"):
        MemoryOptions(store_dir=tmp_path, compression={"method": "dycoke", "ratio": 0.5})
    with pytest.raises(MemoryConfigError, match="prune"):
        MemoryOptions(store_dir=tmp_path, compression={"method": "holitom", "prune": 1.5})
    with pytest.raises(MemoryConfigError, match="twice"):
        MemoryOptions(store_dir=tmp_path, compression=["metok", "metok"])
    with pytest.raises(MemoryConfigError, match="method"):
        MemoryOptions(store_dir=tmp_path, compression={"prune": 0.5})
    with pytest.raises(MemoryConfigError, match="number"):
        MemoryOptions(store_dir=tmp_path, compression={"method": "metok", "prune": "lots"})
    options = MemoryOptions(
        store_dir=tmp_path, compression=[{"method": "metok", "layers": [9, 3]}, "dycoke"]
    )
    assert [s.method for s in options.compression] == ["metok", "dycoke"]
    assert options.compression[0].settings.layers == (3, 9)  # type: ignore[union-attr]
    assert MemoryOptions(store_dir=tmp_path).compression == ()
    assert make_compressor(()).active is False


def test_layers_scale_with_depth() -> None:
    assert [scaled_layer(p, 28, 24) for p in (3, 10, 19)] == [3, 9, 16]
    assert scaled_layer(18, 28, 24) == 15
    assert scaled_layer(18, 28, 28) == 18
    assert scaled_layer(3, 28, 2) == 1 and scaled_layer(19, 28, 2) == 1


def test_the_config_section_mounts_the_option(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from stream_agent.config.sections import MemoryConfig

    section = MemoryConfig.model_validate(
        {
            "store_dir": str(tmp_path),
            "compression": [{"method": "metok", "prune": 0.5}, "dycoke"],
        }
    )
    options = MemoryOptions.from_config(section)
    metok, dycoke = options.compression
    assert metok.method == "metok" and metok.settings.prune == 0.5  # type: ignore[union-attr]
    assert metok.settings.deep_prune == 1.0  # type: ignore[union-attr]
    assert dycoke.method == "dycoke"
    assert MemoryOptions.from_config(MemoryConfig()).compression == ()
    with pytest.raises(ValidationError):
        MemoryConfig.model_validate({"compression": {"method": "dycoke", "ratio": 0.5}})
    with pytest.raises(ValidationError):
        MemoryConfig.model_validate({"compression": "zip"})
