"""Tiny (and realistic-shape) random SmolVLM2 checkpoints, built locally (no hub, no download).

The tiny checkpoint has a 2-layer vision tower of width 64 on 128x128 frames with 16x16 patches
(8x8 patches, pixel shuffle 2 -> 4x4 = 16 tokens per frame) and a 2-layer Llama of width 64; its
weights are spread (see :func:`stream_agent.models.testing.spread_weights`) so that greedy output
is not degenerate. ``realistic=True`` gives SmolVLM2-500M's shapes with the library's default
random init: SigLIP-B/16 at 512x512 (12 layers, width 768, 32x32 patches), pixel shuffle 4 ->
8x8 = 64 tokens per frame, and a SmolLM2-360M-like Llama (32 layers, width 960, 15 query / 5
key-value heads, FFN 2560, vocabulary 49,280, untied head): about 507M parameters (2 GB in fp32).

The tokenizer is the shared byte-level BPE with SmolVLM's special tokens and SmolVLM2's chat
template. The image processor resizes frames straight to the square vision size, without
splitting, the way videos are processed; checkpoints of the real models resize the longest edge
first, which :func:`stream_agent.models.smolvlm.read_frame_settings` reads from their configs.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

from stream_agent.models.testing import CheckpointParts, build_tokenizer, spread_weights

#: The chat template of the released SmolVLM2 checkpoints (text and images only; the processor
#: renders videos with its own template, which the adapter uses too).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

#: SmolVLM's special tokens: chat markers, image markers and the tile tokens of split images.
SMOLVLM_SPECIALS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)


def smolvlm_tokenizer() -> Any:
    """The SmolVLM test tokenizer (eos ``<end_of_utterance>``, pad ``<|im_end|>``)."""
    return build_tokenizer(
        SMOLVLM_SPECIALS,
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )


def smolvlm_config(
    tokenizer: Any, realistic: bool, model_type: str = "smolvlm"
) -> SmolVLMConfig | Idefics3Config:
    """The config of a SmolVLM2 (or, with ``model_type="idefics3"``, Idefics3) test checkpoint."""
    ids = {s: int(tokenizer.convert_tokens_to_ids(s)) for s in SMOLVLM_SPECIALS[:7]}
    if realistic:
        vision: dict[str, Any] = {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 512,
        }
        text: dict[str, Any] = {
            "vocab_size": 49280,
            "hidden_size": 960,
            "intermediate_size": 2560,
            "num_hidden_layers": 32,
            "num_attention_heads": 15,
            "num_key_value_heads": 5,
            "max_position_embeddings": 8192,
        }
        scale = 4
    else:
        vision = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 128,
        }
        text = {
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
        }
        scale = 2
    config_class = SmolVLMConfig if model_type == "smolvlm" else Idefics3Config
    return config_class(
        vision_config={"patch_size": 16, "hidden_act": "gelu_pytorch_tanh", **vision},
        text_config={
            "model_type": "llama",
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<end_of_utterance>"],
            "pad_token_id": ids["<|im_end|>"],
            "tie_word_embeddings": False,
            **text,
        },
        image_token_id=ids["<image>"],
        scale_factor=scale,
        tie_word_embeddings=False,
    )


def build_smolvlm_parts(seed: int, realistic: bool, model_type: str = "smolvlm") -> CheckpointParts:
    """A SmolVLM2 (or Idefics3) test checkpoint; see the module docstring for the shapes."""
    tokenizer = smolvlm_tokenizer()
    config = smolvlm_config(tokenizer, realistic, model_type)
    torch.manual_seed(seed)
    model_class: Any = (
        SmolVLMForConditionalGeneration
        if model_type == "smolvlm"
        else Idefics3ForConditionalGeneration
    )
    model = model_class(config)
    if not realistic:
        spread_weights(model, seed)
    ids = {s: int(tokenizer.convert_tokens_to_ids(s)) for s in SMOLVLM_SPECIALS[:4]}
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<end_of_utterance>"],
        pad_token_id=ids["<|im_end|>"],
        do_sample=False,
    )
    vision_config: Any = config.vision_config
    square = int(vision_config.image_size)
    image_processor = SmolVLMImageProcessorPil(
        size={"height": square, "width": square},
        max_image_size={"longest_edge": square},
        do_image_splitting=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return CheckpointParts(
        family="smolvlm",
        model=model.eval(),
        tokenizer=tokenizer,
        image_processor=image_processor,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )


def build_smolvlm(seed: int, realistic: bool) -> CheckpointParts:
    """The ``smolvlm`` family's builder for :data:`stream_agent.models.testing.BUILDERS`."""
    return build_smolvlm_parts(seed, realistic)
