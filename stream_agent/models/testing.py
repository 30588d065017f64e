"""Tiny, randomly initialised checkpoints of each family, built locally (no hub, no download).

A test checkpoint is a real transformers model class with a small config, a byte-level BPE
tokenizer trained here on a fixed corpus (with the family's special tokens and chat template) and
the family's image processor config, written with ``save_pretrained`` so that
:func:`stream_agent.models.load_model` loads it exactly like a real model. Everything is
deterministic from the seed.

Weights are re-drawn with a large spread (std 0.15 for matrices) because transformers' default
init (std 0.02) makes a tiny model's greedy output one repeated token, which would hide decoding
bugs; norms and biases are perturbed too, so a forward that forgets one of them disagrees.

``realistic=True`` gives the real layer counts and widths (LLaVA-OneVision-0.5B: SigLIP-so400m
384/14 with the 26 layers the checkpoint keeps, Qwen2-0.5B with 24 layers of width 896) with
transformers' default random init; it is meant for speed measurements (build it in memory with
:func:`build_test_adapter`: saved in float32 it is about 3.6 GB).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from stream_agent.errors import ModelError
from stream_agent.models.base import VideoLLM
from stream_agent.models.loading import parse_device, parse_dtype
from stream_agent.models.registry import adapter_class, get_family

log = logging.getLogger(__name__)

MARKER_FILE = "stream_agent_test_model.json"

CORPUS: tuple[str, ...] = (
    "A person walks into the room and sits down at the table.",
    "What happens in the video? Describe what the people are doing.",
    "The camera shows a parking lot with two cars and a bicycle.",
    "Someone opens the door, looks around, and leaves again.",
    "How many people are in the kitchen at the end of the clip?",
    "The dog runs across the garden while a child plays with a ball.",
    "A delivery van stops in front of the house at night.",
    "Is anyone still sitting at the desk? Yes, one woman is reading.",
    "The light turns red and the traffic stops at the crossing.",
    "He picks up the box, carries it to the shelf and puts it down.",
    "You are a helpful assistant. Answer the question about the video.",
    "user assistant system question answer frame video image",
    "0 1 2 3 4 5 6 7 8 9 10 20 30 seconds minutes left right top bottom",
)

# The chat template of the released LLaVA-OneVision processors: images, then videos, then text.
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


LLAVA_ONEVISION_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


class CheckpointBuildError(ModelError):
    """A test checkpoint cannot be written (the target folder is in use)."""


@dataclass(frozen=True, slots=True, eq=False)
class CheckpointParts:
    """An in-memory test checkpoint: what ``save_pretrained`` writes, before writing it."""

    family: str
    model: Any
    tokenizer: Any
    image_processor: Any
    chat_template: str


def build_tokenizer(
    specials: Sequence[str],
    *,
    eos_token: str,
    pad_token: str,
    chat_template: str,
    vocab_size: int = 384,
) -> Any:
    """A byte-level BPE tokenizer trained on :data:`CORPUS`, with ``specials`` as special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token, chat_template=chat_template
    )


def spread_weights(model: torch.nn.Module, seed: int, std: float = 0.15) -> None:
    """Redraw all parameters so that a tiny model's outputs are far from degenerate.

    Matrices get ``N(0, std)``, convolution kernels ``N(0, std / 3)``, norm scales ``1 + N(0, 0.1)``
    and all other vectors (biases, ``image_newline``) ``N(0, 0.1)``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.ndim >= 3:
                values = torch.randn(param.shape, generator=gen) * (std / 3)
            elif param.ndim == 2:
                values = torch.randn(param.shape, generator=gen) * std
            elif "norm" in name and name.endswith("weight"):
                values = 1.0 + torch.randn(param.shape, generator=gen) * 0.1
            else:
                values = torch.randn(param.shape, generator=gen) * 0.1
            param.copy_(values.to(param.dtype))


def llava_onevision_tokenizer() -> Any:
    """The LLaVA-OneVision test tokenizer (Qwen2's chat tokens plus ``<image>`` and ``<video>``)."""
    return build_tokenizer(
        LLAVA_ONEVISION_SPECIALS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )


def llava_onevision_config(tokenizer: Any, realistic: bool) -> LlavaOnevisionConfig:
    """The config of a LLaVA-OneVision test checkpoint using ``tokenizer``'s special tokens."""
    ids = {s: int(tokenizer.convert_tokens_to_ids(s)) for s in LLAVA_ONEVISION_SPECIALS}
    if realistic:
        image_size = 384
        vision: dict[str, Any] = {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 26,
            "num_attention_heads": 16,
        }
        text: dict[str, Any] = {
            "vocab_size": 151936,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": True,
        }
        pinpoints = None
    else:
        image_size = 98
        vision = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        }
        text = {
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
        }
        pinpoints = [[98, 98], [98, 196], [196, 98], [196, 196]]
    return LlavaOnevisionConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": image_size,
            "patch_size": 14,
            "vision_use_head": False,
            **vision,
        },
        text_config={
            "model_type": "qwen2",
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
            **text,
        },
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=bool(text["tie_word_embeddings"]),
    )


def build_llava_onevision(seed: int, realistic: bool) -> CheckpointParts:
    """A LLaVA-OneVision test checkpoint (tiny: 98/14 images -> 7x7 patches -> 16 tokens/frame)."""
    tokenizer = llava_onevision_tokenizer()
    config = llava_onevision_config(tokenizer, realistic)
    ids = {s: int(tokenizer.convert_tokens_to_ids(s)) for s in LLAVA_ONEVISION_SPECIALS}
    vision_config: Any = config.vision_config
    image_size = int(vision_config.image_size)
    pinpoints = None if realistic else config.image_grid_pinpoints
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    if not realistic:
        spread_weights(model, seed)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    processor_kwargs: dict[str, Any] = {
        "size": {"height": image_size, "width": image_size},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    if pinpoints is not None:
        processor_kwargs["image_grid_pinpoints"] = pinpoints
    image_processor = LlavaOnevisionImageProcessorPil(**processor_kwargs)
    return CheckpointParts(
        family="llava_onevision",
        model=model.eval(),
        tokenizer=tokenizer,
        image_processor=image_processor,
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )


#: Test checkpoint builders by family name, as ``"module:function"`` (imported when used) with
#: ``function(seed, realistic) -> CheckpointParts``. Each family keeps its builder beside its
#: adapter, so adding a family never edits another family's module.
BUILDERS: dict[str, str] = {
    "llava_onevision": "stream_agent.models.testing:build_llava_onevision",
    "qwen2_vl": "stream_agent.models.qwen2_vl_testing:build_qwen2_vl",
    "qwen2_5_vl": "stream_agent.models.qwen2_vl_testing:build_qwen2_5_vl",
    "smolvlm": "stream_agent.models.smolvlm_testing:build_smolvlm",
}


def build_parts(family: str, *, seed: int = 0, realistic: bool = False) -> CheckpointParts:
    """An in-memory test checkpoint of ``family``."""
    get_family(family)  # unknown names fail with the list of supported families
    try:
        module_name, _, function_name = BUILDERS[family].partition(":")
    except KeyError:
        raise CheckpointBuildError(f"no test checkpoint builder for family {family!r}") from None
    builder: Callable[[int, bool], CheckpointParts] = getattr(
        importlib.import_module(module_name), function_name
    )
    return builder(seed, realistic)


def save_parts(parts: CheckpointParts, folder: Path, *, seed: int, realistic: bool) -> Path:
    """Write ``parts`` into ``folder`` as a loadable checkpoint."""
    parts.model.save_pretrained(str(folder))
    parts.tokenizer.save_pretrained(str(folder))
    parts.image_processor.save_pretrained(str(folder))
    marker = {"family": parts.family, "seed": seed, "realistic": realistic}
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return folder


def make_test_model(
    family: str,
    folder: str | Path,
    *,
    seed: int = 0,
    realistic: bool = False,
    overwrite: bool = False,
) -> Path:
    """Build a test checkpoint of ``family`` and save it into ``folder`` (created if needed).

    A non-empty ``folder`` is refused unless ``overwrite`` (files of the same names are replaced).
    """
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise CheckpointBuildError(f"{path} is a file; pass a folder for the test checkpoint")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CheckpointBuildError(
            f"{path} is not empty; pass a new folder or --force to overwrite"
        )
    parts = build_parts(family, seed=seed, realistic=realistic)
    path.mkdir(parents=True, exist_ok=True)
    save_parts(parts, path, seed=seed, realistic=realistic)
    log.info("wrote %s test checkpoint (seed %d) to %s", family, seed, path)
    return path


def build_test_adapter(
    family: str,
    *,
    seed: int = 0,
    realistic: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
) -> VideoLLM:
    """A test checkpoint of ``family`` as a ready adapter, without writing it to disk."""
    dev = parse_device(device)
    parts = build_parts(family, seed=seed, realistic=realistic)
    model = parts.model.to(device=dev, dtype=parse_dtype(dtype, dev))
    cls: Any = adapter_class(get_family(family))
    transform = cls.transform_from_processor(parts.image_processor)
    adapter: VideoLLM = cls(
        model=model,
        tokenizer=parts.tokenizer,
        chat_template=parts.chat_template,
        transform=transform,
    )
    return adapter
