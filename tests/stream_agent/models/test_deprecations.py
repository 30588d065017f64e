"""Our calls into transformers use its current argument names, and the suite notices a new
deprecation: pyproject's ``filterwarnings`` turns transformers' deprecated-argument
``FutureWarning`` (and any deprecation warning raised from transformers' code) into an error."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import DynamicCache, Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding


def _layer() -> tuple[Qwen2Config, Qwen2DecoderLayer, tuple[torch.Tensor, torch.Tensor]]:
    config = Qwen2Config(
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=1,
        vocab_size=32,
    )
    layer = Qwen2DecoderLayer(config, 0).eval()
    rotary = Qwen2RotaryEmbedding(config)
    hidden = torch.zeros(1, 3, 16)
    embeddings = rotary(hidden, torch.arange(3)[None])
    return config, layer, embeddings


def test_the_old_cache_argument_fails_the_suite() -> None:
    config, layer, embeddings = _layer()
    with pytest.raises(FutureWarning, match="past_key_values"):
        layer(
            torch.zeros(1, 3, 16),
            position_embeddings=embeddings,
            attention_mask=None,
            past_key_values=DynamicCache(config=config),
        )


def test_the_current_argument_warns_nothing() -> None:
    config, layer, embeddings = _layer()
    cache = DynamicCache(config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(
            torch.zeros(1, 3, 16), position_embeddings=embeddings, attention_mask=None, cache=cache
        )
    assert cache.layers[0].keys.shape[-2] == 3
