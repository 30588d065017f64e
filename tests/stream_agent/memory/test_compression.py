"""The in-context compression hooks: what a compressor is shown (each layer's context and the
previous layer's attention, as the library computes it) and that keeping everything changes
nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, eager_attention_forward

from stream_agent.memory import AnswerFinal, Memory, MemoryConfigError, MemoryOptions
from stream_agent.memory.compression import (
    COMPRESSORS,
    AttentionProbe,
    InContextCompressor,
    LayerContext,
)
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import DecodeOptions, VisualTokens

from .conftest import feed

QUESTION = "What happens at the door?"
OPTIONS = DecodeOptions(max_new_tokens=4, stop_ids=())


class KeepAll(InContextCompressor):
    """Narrows nothing, but through every hook (an explicit all-visible keep-set)."""

    name = "keep-all"
    seen: ClassVar[list[tuple[LayerContext, AttentionProbe | None, torch.Tensor | None]]] = []

    def prefill_layer(
        self, context: LayerContext, previous: AttentionProbe | None
    ) -> torch.Tensor | None:
        weights = previous.weights() if previous is not None else None
        KeepAll.seen.append((context, previous, weights))
        return torch.ones(context.context_slots, dtype=torch.bool)

    def decode_layer(
        self, context: LayerContext, previous: AttentionProbe | None
    ) -> torch.Tensor | None:
        assert context.step is not None
        return torch.ones(context.context_slots, dtype=torch.bool)


def _answer(memory: Memory) -> tuple[AnswerFinal, torch.Tensor]:
    _, prepared = memory.prepare(QUESTION, max_new_tokens=OPTIONS.max_new_tokens)
    final = list(memory.answer(QUESTION, options=OPTIONS))[-1]
    assert isinstance(final, AnswerFinal)
    return final, prepared.logits


def test_keeping_everything_through_the_hooks_changes_nothing(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(COMPRESSORS, "keep-all", KeepAll)
    plain = make_memory(llava, window_tokens=32, top_k=3, recent_blocks=1)
    feed(plain, llava, frame_tokens)
    hooked = make_memory(
        llava,
        plain.options.store_dir.parent / "hooked",
        window_tokens=32,
        top_k=3,
        recent_blocks=1,
        compression="keep-all",
    )
    feed(hooked, llava, frame_tokens)
    KeepAll.seen.clear()
    (final_a, logits_a), (final_b, logits_b) = _answer(plain), _answer(hooked)
    assert final_a.token_ids == final_b.token_ids
    assert final_a.evidence == final_b.evidence
    torch.testing.assert_close(logits_a, logits_b, rtol=0, atol=1e-6)
    # every layer was shown its context: the sink, then its blocks in time order
    layers = llava.lm_spec.num_layers
    contexts = [c for c, _, _ in KeepAll.seen[:layers]]
    assert [c.layer for c in contexts] == list(range(layers))
    for context in contexts:
        assert context.sink == slice(0, plain.sink.tokens)
        ends = [b.slots.stop for b in context.blocks]
        assert ends[-1] == context.context_slots == context.rows.start
        seqs = [b.candidate.meta.seq for b in context.blocks]
        assert seqs == sorted(seqs) and seqs[-1] == 9 and context.blocks[-1].recent


def test_the_probe_gives_the_previous_layers_attention_as_the_library_computes_it(
    llava: VideoLLM,
    frame_tokens: list[VisualTokens],
    make_memory: Callable[..., Memory],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(COMPRESSORS, "keep-all", KeepAll)
    memory = make_memory(llava, window_tokens=32, top_k=3, compression="keep-all")
    feed(memory, llava, frame_tokens[:6])
    KeepAll.seen.clear()
    memory.prepare(QUESTION)
    _, probe, weights = KeepAll.seen[1]
    assert probe is not None and weights is not None
    context = probe.context
    assert context.layer == 0
    # layer 0's input is the suffix's embeddings; redo its attention with the library's pieces
    layout = llava.build_prompt(QUESTION)
    suffix, _ = memory.planner.suffix(layout, int(context.rows.start))
    start = context.context_slots
    layer = llava.decoder.layers[0]
    attn = layer.self_attn
    heads, dim = llava.lm_spec.num_heads, llava.lm_spec.head_dim
    with torch.no_grad():
        h = layer.input_layernorm(suffix.embeds[None])
        q = attn.q_proj(h).view(1, -1, heads, dim).transpose(1, 2)
        cos, sin = llava.decoder.rotary_emb(q, llava.lm_position_ids(suffix.positions))
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        extent = context.cache.extent
        keys = context.cache.keys[:, :, :extent]
        values = context.cache.values[:, :, :extent]
        rows = len(suffix)
        visible = torch.ones(rows, extent, dtype=torch.bool)
        visible[:, start:] = torch.ones(rows, rows, dtype=torch.bool).tril()
        mask = torch.zeros(rows, extent).masked_fill(~visible, torch.finfo(torch.float32).min)
        _, expected = eager_attention_forward(
            attn, q, keys, values, mask[None, None], scaling=attn.scaling, dropout=0.0
        )
    assert weights.shape == (heads, rows, extent)
    torch.testing.assert_close(weights, expected[0].float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(heads, rows))
    # the question's own rows, as METok reads them
    question = probe.weights(rows=context.question_rows)
    torch.testing.assert_close(question, weights[:, context.question_rows])


def test_an_unknown_compression_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MemoryConfigError, match="compression"):
        MemoryOptions(store_dir=tmp_path, compression="zip")
