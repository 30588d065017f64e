"""Test checkpoints of Qwen2-VL and Qwen2.5-VL (see :mod:`stream_agent.models.testing`).

Tiny ones have a 64-wide LLM with M-RoPE sections (2, 3, 3) and a 64-wide ViT (Qwen2.5-VL: three
layers with 2x2-merged-patch windows in layers 0 and 2, full attention in layer 1); the processor
bounds frames to 3,136..18,816 pixels, so a 360x640 frame becomes 84x168 pixels, 6x12 patches and
3x6 = 18 visual tokens per frame pair. ``realistic=True`` has the real layer counts and widths:
Qwen2-VL-2B (ViT 32 x 1280 with 16 heads, Qwen2-1.5B: 28 layers of 1536, 12/2 heads, FFN 8960) and
Qwen2.5-VL-3B (ViT 32 x 1280, 16 heads, gated FFN 3420, windows of 112 pixels, full attention in
layers 7/15/23/31, output 2048; LLM 36 layers of 2048, 16/2 heads, FFN 11008), with the real
processors' pixel bounds, transformers' default init, and the real vocabulary size (151,936).
In float32 they take about 8.9 GB and 15 GB of memory.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from stream_agent.models.testing import CheckpointParts, build_tokenizer, spread_weights

QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The chat template of the released Qwen2-VL / Qwen2.5-VL processors.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Pixel bounds of the tiny test processor (56*56 .. 28*28*24).
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 28 * 28 * 24
#: Pixel bounds of the released Qwen2-VL / Qwen2.5-VL image processors.
REAL_MIN_PIXELS = 56 * 56
REAL_MAX_PIXELS = 28 * 28 * 16384

_TINY_TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "mrope_section": [2, 3, 3],
}


def qwen_tokenizer() -> Any:
    """The Qwen test tokenizer: ChatML and vision special tokens, the released chat template."""
    return build_tokenizer(
        QWEN_SPECIALS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def _special_ids(tokenizer: Any) -> dict[str, int]:
    return {s: int(tokenizer.convert_tokens_to_ids(s)) for s in QWEN_SPECIALS}


def _text_config(tokenizer: Any, sizes: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    ids = _special_ids(tokenizer)
    sizes = dict(sizes)
    section = sizes.pop("mrope_section")
    return {
        "vocab_size": vocab_size,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": section,
        },
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": None,
        **sizes,
    }


def _token_ids(tokenizer: Any) -> dict[str, Any]:
    ids = _special_ids(tokenizer)
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def qwen2_vl_config(tokenizer: Any, realistic: bool) -> Qwen2VLConfig:
    """A Qwen2-VL test config (realistic: Qwen2-VL-2B's shapes)."""
    if realistic:
        vision: dict[str, Any] = {
            "depth": 32,
            "embed_dim": 1280,
            "hidden_size": 1536,
            "num_heads": 16,
            "mlp_ratio": 4,
        }
        text: dict[str, Any] = {
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "mrope_section": [16, 24, 24],
        }
        vocab_size, tie = 151936, True
    else:
        vision = {"depth": 2, "embed_dim": 64, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2}
        text, vocab_size, tie = _TINY_TEXT, len(tokenizer), False
    return Qwen2VLConfig(
        vision_config={"hidden_act": "quick_gelu", **vision},
        text_config={**_text_config(tokenizer, text, vocab_size), "tie_word_embeddings": tie},
        tie_word_embeddings=tie,
        **_token_ids(tokenizer),
    )


def qwen2_5_vl_config(tokenizer: Any, realistic: bool) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL test config (realistic: Qwen2.5-VL-3B's shapes)."""
    if realistic:
        vision: dict[str, Any] = {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        }
        text: dict[str, Any] = {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "mrope_section": [16, 24, 24],
        }
        vocab_size, tie = 151936, True
    else:
        vision = {
            "depth": 3,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_heads": 4,
            "out_hidden_size": 64,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        }
        text, vocab_size, tie = _TINY_TEXT, len(tokenizer), False
    return Qwen2_5_VLConfig(
        vision_config={"hidden_act": "silu", "tokens_per_second": 2, **vision},
        text_config={**_text_config(tokenizer, text, vocab_size), "tie_word_embeddings": tie},
        tie_word_embeddings=tie,
        **_token_ids(tokenizer),
    )


def _parts(family: str, model: Any, tokenizer: Any, seed: int, realistic: bool) -> CheckpointParts:
    if not realistic:
        spread_weights(model, seed)
        # spread_weights recognises norms by name; the merger's ``ln_q`` is one too.
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            ln_q = model.model.visual.merger.ln_q.weight
            ln_q.copy_(1.0 + torch.randn(ln_q.shape, generator=gen) * 0.1)
    ids = _special_ids(tokenizer)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    bounds = (REAL_MIN_PIXELS, REAL_MAX_PIXELS) if realistic else (TINY_MIN_PIXELS, TINY_MAX_PIXELS)
    processor = Qwen2VLImageProcessorPil(min_pixels=bounds[0], max_pixels=bounds[1])
    return CheckpointParts(
        family=family,
        model=model.eval(),
        tokenizer=tokenizer,
        image_processor=processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def build_qwen2_vl(seed: int, realistic: bool) -> CheckpointParts:
    """A Qwen2-VL test checkpoint."""
    tokenizer = qwen_tokenizer()
    config = qwen2_vl_config(tokenizer, realistic)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    return _parts("qwen2_vl", model, tokenizer, seed, realistic)


def build_qwen2_5_vl(seed: int, realistic: bool) -> CheckpointParts:
    """A Qwen2.5-VL test checkpoint."""
    tokenizer = qwen_tokenizer()
    config = qwen2_5_vl_config(tokenizer, realistic)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    return _parts("qwen2_5_vl", model, tokenizer, seed, realistic)
