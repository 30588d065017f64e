"""LLaVA-OneVision: a SigLIP vision tower, a 2-layer MLP projector, 2x2 bilinear pooling, Qwen2.

The video path follows ``LlavaOnevisionModel.get_video_features`` exactly: each frame is resized to
the vision size (no anyres tiling), the tower's hidden state ``vision_feature_layer`` (before the
post-layernorm, which the model never uses) is projected to the LLM width, pooled from the
``g x g`` patch grid to ``ceil(g/2) x ceil(g/2)`` with bilinear interpolation (27 -> 14, i.e. 196
tokens per frame at 384/14), and one ``image_newline`` embedding closes the whole video. The LLM
uses 1-D RoPE, so positions are plain running integers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from cacher.layers import (
    MLP,
    EncoderLayer,
    LayerNorm,
    Linear,
    PatchEmbedding,
    SeparateQKV,
    embed_patches,
)
from stream_agent.models.base import VideoLLM, placeholder_token
from stream_agent.models.errors import IncompleteModelError, InputError, UnsupportedFamilyError
from stream_agent.models.preprocess import frame_transform_from_settings
from stream_agent.models.records import FrameTransform, LMChunk, LMSpec, VisionSpec, VisualTokens
from stream_agent.models.text import load_chat_template

_PREPROCESSOR_KEYS = (
    "size",
    "image_mean",
    "image_std",
    "rescale_factor",
    "resample",
    "do_rescale",
    "do_normalize",
)


def _linear(module: Any) -> Linear:
    return Linear(module.weight, module.bias)


def _layer_norm(module: Any) -> LayerNorm:
    return LayerNorm(module.weight, module.bias, float(module.eps))


def siglip_layer_record(layer: Any, activation: str) -> EncoderLayer:
    """A :class:`cacher.layers.EncoderLayer` referencing a ``SiglipEncoderLayer``'s weights."""
    attn = layer.self_attn
    return EncoderLayer(
        norm1=_layer_norm(layer.layer_norm1),
        qkv=SeparateQKV(_linear(attn.q_proj), _linear(attn.k_proj), _linear(attn.v_proj)),
        out=_linear(attn.out_proj),
        norm2=_layer_norm(layer.layer_norm2),
        mlp=MLP(_linear(layer.mlp.fc1), _linear(layer.mlp.fc2), activation),
        num_heads=int(attn.num_heads),
        head_dim=int(attn.head_dim),
        scale=float(attn.scale),
    )


def read_frame_transform(folder: Path) -> FrameTransform:
    """The video frame transform of a LLaVA-OneVision checkpoint.

    Settings come from the image processor (``preprocessor_config.json``, class defaults filling
    gaps), overridden by ``video_preprocessor_config.json`` where the folder has one, since frames
    take the video path.
    """
    if not (folder / "preprocessor_config.json").is_file():
        raise IncompleteModelError(
            f"{folder} has no preprocessor_config.json; copy the checkpoint's image processor "
            "config into the folder"
        )
    try:
        processor = LlavaOnevisionImageProcessorPil.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise IncompleteModelError(f"cannot read the image processor in {folder}: {exc}") from exc
    settings = {key: processor.to_dict().get(key) for key in _PREPROCESSOR_KEYS}
    video = folder / "video_preprocessor_config.json"
    if video.is_file():
        try:
            overrides = json.loads(video.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IncompleteModelError(f"{video} is not valid JSON: {exc}") from exc
        settings.update({k: overrides[k] for k in _PREPROCESSOR_KEYS if k in overrides})
    return frame_transform_from_settings(settings)


class LlavaOnevisionAdapter(VideoLLM):
    """The LLaVA-OneVision family (``LlavaOnevisionForConditionalGeneration``)."""

    family = "llava_onevision"

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        chat_template: str,
        transform: FrameTransform,
        folder: Path | None = None,
    ) -> None:
        config = model.config
        if config.vision_feature_select_strategy != "full":
            raise UnsupportedFamilyError(
                "LLaVA-OneVision checkpoints with vision_feature_select_strategy="
                f"{config.vision_feature_select_strategy!r} have no video path; only 'full' works"
            )
        placeholder = placeholder_token(tokenizer, config.video_token_id)
        super().__init__(
            model=model,
            tokenizer=tokenizer,
            chat_template=chat_template,
            transform=transform,
            placeholder=placeholder,
            folder=folder,
        )
        vision = config.vision_config
        if (transform.height, transform.width) != (vision.image_size, vision.image_size):
            raise IncompleteModelError(
                f"the image processor resizes to {transform.height}x{transform.width} but the "
                f"vision tower takes {vision.image_size}x{vision.image_size} images"
            )
        self._inner = model.model
        self._tower = model.model.vision_tower
        grid = vision.image_size // vision.patch_size
        num_layers = int(vision.num_hidden_layers)
        feature = config.vision_feature_layer
        indices = [feature] if isinstance(feature, int) else list(feature)
        resolved = tuple(i + num_layers + 1 if i < 0 else i for i in indices)
        if not all(0 <= i <= num_layers for i in resolved):
            raise IncompleteModelError(f"vision_feature_layer {feature} is out of range")
        pooled = math.ceil(grid / 2)
        self._vision_spec = VisionSpec(
            image_size=(vision.image_size, vision.image_size),
            patch_size=int(vision.patch_size),
            patch_grid=(grid, grid),
            hidden_size=int(vision.hidden_size),
            num_layers=num_layers,
            feature_layers=resolved,
            token_grid=(pooled, pooled),
        )
        self._lm_spec = LMSpec.from_text_config(
            config.get_text_config(), rope="1d", dtype=self.dtype
        )
        self._activation = str(vision.hidden_act)

    @classmethod
    def from_folder(
        cls, folder: Path, *, device: torch.device, dtype: torch.dtype
    ) -> LlavaOnevisionAdapter:
        transform = read_frame_transform(folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as exc:
            raise IncompleteModelError(
                f"cannot load the tokenizer in {folder} ({exc}); copy the checkpoint's tokenizer "
                "files into the folder"
            ) from exc
        chat_template = load_chat_template(folder, tokenizer)
        try:
            model: Any = LlavaOnevisionForConditionalGeneration.from_pretrained(
                str(folder), dtype=dtype
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise IncompleteModelError(f"cannot load the model weights in {folder}: {exc}") from exc
        model.to(device)
        return cls(
            model=model,
            tokenizer=tokenizer,
            chat_template=chat_template,
            transform=transform,
            folder=folder,
        )

    # ------------------------------------------------------------------------------------ specs

    @property
    def vision_spec(self) -> VisionSpec:
        return self._vision_spec

    @property
    def lm_spec(self) -> LMSpec:
        return self._lm_spec

    # ----------------------------------------------------------------------------------- vision

    @cached_property
    def patch_embedding(self) -> PatchEmbedding:
        """The SigLIP patch embedding as a :mod:`cacher.layers` record."""
        emb = self._tower.embeddings
        return PatchEmbedding(
            weight=emb.patch_embedding.weight,
            bias=emb.patch_embedding.bias,
            position=emb.position_embedding.weight,
        )

    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        if tuple(pixels.shape[-2:]) != self._vision_spec.image_size or pixels.ndim != 4:
            raise InputError(
                f"pixels must be (F, 3, {self._vision_spec.image_size[0]}, "
                f"{self._vision_spec.image_size[1]}), got {tuple(pixels.shape)}"
            )
        with torch.no_grad():
            return embed_patches(self.patch_embedding, pixels)

    @cached_property
    def vision_layers(self) -> tuple[EncoderLayer, ...]:
        needed = max(self._vision_spec.feature_layers)
        return tuple(
            siglip_layer_record(layer, self._activation)
            for layer in self._tower.encoder.layers[:needed]
        )

    @torch.no_grad()
    def tokens_from_hidden(self, hidden_states: Sequence[torch.Tensor]) -> list[VisualTokens]:
        if len(hidden_states) != len(self._vision_spec.feature_layers):
            raise InputError(
                f"expected {len(self._vision_spec.feature_layers)} hidden states "
                f"(layers {self._vision_spec.feature_layers}), got {len(hidden_states)}"
            )
        # several feature layers are concatenated along the channels, as the library does
        features = torch.cat(list(hidden_states), dim=-1)
        projected = self._inner.multi_modal_projector(features)
        pooled = self.pool(projected)
        grid = self._vision_spec.token_grid
        return [VisualTokens(embeds=frame, grid=grid) for frame in pooled]

    def pool(self, projected: torch.Tensor) -> torch.Tensor:
        """2x2 bilinear pooling of projected patch features ``(F, g*g, D)`` -> ``(F, t*t, D)``.

        The same interpolation as ``LlavaOnevisionModel.apply_pooling``.
        """
        gh, gw = self._vision_spec.patch_grid
        frames, _, dim = projected.shape
        x = projected.view(frames, gh, gw, dim).permute(0, 3, 1, 2).contiguous()
        x = F.interpolate(x, size=list(self._vision_spec.token_grid), mode="bilinear")
        return x.permute(0, 2, 3, 1).reshape(frames, -1, dim)

    # ------------------------------------------------------------------------------------- text

    def embed_text(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(-1)
        with torch.no_grad():
            embeds: torch.Tensor = self._inner.get_input_embeddings()(index)
        return embeds

    def visual_chunk(
        self,
        tokens: VisualTokens,
        start: int,
        *,
        step: int = 0,
        seconds_per_step: float = 1.0,
    ) -> LMChunk:
        return self.sequential_chunk(tokens.embeds, start)  # 1-D: the step needs no offset

    def video_end_chunk(self, start: int) -> LMChunk:
        return self.sequential_chunk(self._inner.image_newline.detach()[None], start)

    # -------------------------------------------------------------------------------------- LLM

    @property
    def _decoder(self) -> Any:
        return self._inner.language_model

    @property
    def _lm_head(self) -> Any:
        return self.model.lm_head
