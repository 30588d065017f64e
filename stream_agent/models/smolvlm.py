"""SmolVLM2 and Idefics3: a SigLIP-style vision tower, pixel shuffle + linear projection, Llama.

The video path follows the library's SmolVLM2 video processor and prompt:

* **Frames.** Each frame is resized twice with PIL, as the SmolVLM image processor does with
  ``do_image_splitting=False``: first to the video ``size`` (the longest edge to ``longest_edge``
  keeping the aspect ratio, or to a fixed height x width), then to the square
  ``max_image_size`` that the vision tower takes (512 for SmolVLM2-256M/500M), then rescaled and
  normalised with the checkpoint's settings. Frames are never split into tiles.
* **Vision.** The tower's patch embedding and pre-LN encoder layers run as :mod:`cacher.layers`
  records; its ``post_layernorm`` is applied to the last hidden state, then the connector's pixel
  shuffle folds each ``s x s`` block of patches into one token (``scale_factor`` ``s``; 32x32
  patches -> 8x8 = 64 tokens at 512/16 with ``s = 4``), in raster order over the token grid, and
  its linear projection maps them to the LLM width.
* **Prompt.** SmolVLM2 writes a video as text and image tokens per frame::

      "\\nFrame from 00:05:" <fake_token_around_image> <global-img>
      (the frame's visual tokens) <fake_token_around_image>

  and ``"\\n\\n"`` after the last frame. The per-frame text comes from
  :meth:`SmolVLMAdapter.frame_open_chunk` / :meth:`SmolVLMAdapter.frame_close_chunk`, so that a
  :meth:`~SmolVLMAdapter.visual_chunk` holds only visual tokens; the ``"\\n\\n"`` starts the
  prompt suffix (it is tokenised together with the question, as in the library's full prompt).
  The library's video introduction ("You are provided the following series of N frames from a
  H:MM:SS video") is left out: a stream knows neither the frame count nor the duration in advance.
  SmolVLM2 checkpoints render the chat with the processor's video template
  (``DEFAULT_CHAT_TEMPLATE`` of ``processing_smolvlm``), as ``SmolVLMProcessor`` does for videos.
  Idefics3 has no video path; its frames are laid out as consecutive images
  (``<fake_token_around_image><global-img>`` ... ``<fake_token_around_image>``, no timestamps)
  in its own chat template.

The LLM is Llama with 1-D RoPE: positions are plain running integers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    Idefics3ForConditionalGeneration,
    SmolVLMForConditionalGeneration,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.models.smolvlm.processing_smolvlm import (
    DEFAULT_CHAT_TEMPLATE,
    DEFAULT_MEDIA_OUTTRO,
    FRAME_TIMESTAMP_MESSAGE,
)
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

from cacher.layers import EncoderLayer, PatchEmbedding, embed_patches
from stream_agent.models.base import VideoLLM
from stream_agent.models.errors import IncompleteModelError, InputError, UnsupportedFamilyError
from stream_agent.models.llava_onevision import siglip_layer_record
from stream_agent.models.loading import read_config
from stream_agent.models.preprocess import (
    check_frame,
    frame_transform_from_settings,
    preprocess_frames,
)
from stream_agent.models.records import (
    FrameTransform,
    LMChunk,
    LMSpec,
    PromptLayout,
    VisionSpec,
    VisualTokens,
)
from stream_agent.models.text import build_prompt_layout, load_chat_template

#: The model types this adapter loads, with their model classes.
MODEL_CLASSES: dict[str, Any] = {
    "smolvlm": SmolVLMForConditionalGeneration,
    "idefics3": Idefics3ForConditionalGeneration,
}

#: The library's absolute cap on a resized side (``MAX_IMAGE_SIZE`` of the SmolVLM processors).
MAX_IMAGE_SIZE = 4096

_SETTING_KEYS = (
    "size",
    "max_image_size",
    "image_mean",
    "image_std",
    "rescale_factor",
    "resample",
    "do_rescale",
    "do_normalize",
)


# ----------------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class FrameResize:
    """The first of the two resizes of a SmolVLM frame (the processor's ``size``).

    Either ``longest_edge`` (the longest side becomes that length, the aspect ratio is kept and
    the other side rounded up to an even number) or a fixed ``height`` x ``width``.
    """

    longest_edge: int | None = None
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        fixed = self.height is not None and self.width is not None
        if (self.longest_edge is None) == (not fixed) or (self.longest_edge or 1) < 1:
            raise IncompleteModelError(
                "a SmolVLM frame size needs either a positive longest_edge or height and width"
            )

    @staticmethod
    def from_size(size: Any) -> FrameResize:
        """From a processor ``size`` dict (``{"longest_edge": n}`` or ``{"height", "width"}``)."""
        if isinstance(size, dict) and size.get("longest_edge"):
            return FrameResize(longest_edge=int(size["longest_edge"]))
        if isinstance(size, dict) and size.get("height") and size.get("width"):
            return FrameResize(height=int(size["height"]), width=int(size["width"]))
        raise IncompleteModelError(
            f"the SmolVLM processor size {size!r} is neither a longest_edge nor a height x width"
        )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a ``height`` x ``width`` frame is resized to."""
        if self.longest_edge is None:
            assert self.height is not None and self.width is not None
            return self.height, self.width
        return longest_edge_size(height, width, self.longest_edge)


def longest_edge_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """The library's longest-edge resize size (``get_resize_output_image_size`` of the SmolVLM
    image processor): the longest side becomes ``longest_edge``, the other keeps the aspect ratio
    (truncated, then rounded up to even), and neither exceeds :data:`MAX_IMAGE_SIZE`."""
    aspect = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest_edge
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width = MAX_IMAGE_SIZE
        height = int(width / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height = MAX_IMAGE_SIZE
        width = int(height * aspect)
    return max(height, 1), max(width, 1)


@dataclass(frozen=True, slots=True)
class SmolVLMFrameSettings:
    """How a frame becomes SmolVLM pixels: ``first`` resize (None: straight to the square), then
    ``transform`` (the square ``max_image_size`` resize, rescale and normalisation)."""

    transform: FrameTransform
    first: FrameResize | None = None


def preprocess_smolvlm_frames(
    frames: Sequence[npt.NDArray[np.uint8]], settings: SmolVLMFrameSettings
) -> npt.NDArray[np.float32]:
    """RGB uint8 frames ``(H, W, 3)`` -> float32 ``(F, 3, S, S)``, equal to the SmolVLM image
    processor (PIL backend) with ``do_image_splitting=False`` on each frame."""
    first = settings.first
    if first is None:
        return preprocess_frames(frames, settings.transform)
    resized: list[npt.NDArray[np.uint8]] = []
    for frame in frames:
        image = Image.fromarray(check_frame(frame))
        height, width = first.output_size(image.height, image.width)
        image = image.resize(
            (width, height), resample=Image.Resampling(settings.transform.resample)
        )
        resized.append(np.asarray(image))
    return preprocess_frames(resized, settings.transform)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IncompleteModelError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise IncompleteModelError(f"{path} does not hold a JSON object")
    return data


def _video_processor_dict(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's own video processor settings, looked up as the library does
    (``processor_config.json``'s ``video_processor``, then ``video_preprocessor_config.json``);
    None when it has none (the library then reads ``preprocessor_config.json``)."""
    nested = folder / "processor_config.json"
    if nested.is_file():
        video = _load_json(nested).get("video_processor")
        if isinstance(video, dict):
            return video
    separate = folder / "video_preprocessor_config.json"
    if separate.is_file():
        return _load_json(separate)
    return None


def _settings(values: dict[str, Any]) -> SmolVLMFrameSettings:
    max_size = values.get("max_image_size")
    if not isinstance(max_size, dict) or not max_size.get("longest_edge"):
        raise IncompleteModelError(
            f"the SmolVLM processor's max_image_size {max_size!r} has no longest_edge"
        )
    square = int(max_size["longest_edge"])
    transform = frame_transform_from_settings(
        {**values, "size": {"height": square, "width": square}}
    )
    return SmolVLMFrameSettings(transform=transform, first=FrameResize.from_size(values["size"]))


def read_frame_settings(folder: Path, model_type: str) -> SmolVLMFrameSettings:
    """The video frame settings of a SmolVLM2 or Idefics3 checkpoint folder.

    SmolVLM2 frames take the video processor's settings: its own config where the checkpoint has
    one (class defaults filling gaps, and ``video_sampling.video_size`` as the size when no
    ``size`` is given, as ``SmolVLMVideoProcessor`` does), else the image processor's
    ``preprocessor_config.json``. Idefics3 has no video processor: its image processor's settings.
    """
    nested = folder / "processor_config.json"
    if not (folder / "preprocessor_config.json").is_file() and not (
        nested.is_file() and isinstance(_load_json(nested).get("image_processor"), dict)
    ):
        raise IncompleteModelError(
            f"{folder} has no preprocessor_config.json; copy the checkpoint's image processor "
            "config into the folder"
        )
    processor_class = (
        SmolVLMImageProcessorPil if model_type == "smolvlm" else Idefics3ImageProcessorPil
    )
    try:
        processor = processor_class.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise IncompleteModelError(f"cannot read the image processor in {folder}: {exc}") from exc
    image_settings = processor.to_dict()
    values = {key: image_settings.get(key) for key in _SETTING_KEYS}
    video = _video_processor_dict(folder) if model_type == "smolvlm" else None
    if video is not None:
        values = {key: getattr(SmolVLMVideoProcessor, key, None) for key in _SETTING_KEYS}
        values.update({key: video[key] for key in _SETTING_KEYS if key in video})
        sampling = video.get("video_sampling")
        if "size" not in video and isinstance(sampling, dict) and "video_size" in sampling:
            values["size"] = sampling["video_size"]
    return _settings(values)


# ----------------------------------------------------------------------------------- vision


def pixel_shuffle(features: torch.Tensor, grid: tuple[int, int], scale: int) -> torch.Tensor:
    """Fold each ``scale x scale`` block of a frame's patch features into one token.

    ``features`` is ``(F, gh*gw, D)`` in raster order over ``grid``; the result is
    ``(F, (gh/scale)*(gw/scale), scale*scale*D)`` in raster order over the token grid, each
    token's channels ordered (row in block, column in block, channel), exactly as the library's
    ``SmolVLMConnector.pixel_shuffle``.
    """
    frames, count, dim = features.shape
    gh, gw = grid
    if count != gh * gw or gh % scale or gw % scale:
        raise InputError(
            f"{count} patch features do not form a {gh}x{gw} grid divisible by {scale}"
        )
    x = features.reshape(frames, gh // scale, scale, gw // scale, scale, dim)
    x = x.permute(0, 1, 3, 2, 4, 5)
    return x.reshape(frames, (gh // scale) * (gw // scale), scale * scale * dim)


def library_position_ids(grid: int) -> torch.Tensor:
    """The position-embedding row of each patch of a full (unpadded) frame, computed with the
    same float bucketing as ``SmolVLMVisionEmbeddings.forward`` (the identity for the usual
    grids, but derived rather than assumed)."""
    boundaries = torch.arange(1 / grid, 1.0, 1 / grid)
    step = 1.0 / torch.tensor([grid])
    coords = torch.arange(grid, dtype=torch.float32)[None] * step[:, None]
    buckets = torch.bucketize(torch.clamp(coords, max=1.0 - 1e-6), boundaries, right=True)[0]
    return (buckets[:, None] * grid + buckets[None, :]).reshape(-1)


# ---------------------------------------------------------------------------------- adapter


class SmolVLMAdapter(VideoLLM):
    """The SmolVLM2 family (``SmolVLMForConditionalGeneration``; also Idefics3 checkpoints)."""

    family = "smolvlm"

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        chat_template: str,
        transform: FrameTransform,
        folder: Path | None = None,
        first_resize: FrameResize | None = None,
    ) -> None:
        config = model.config
        model_type = str(config.model_type)
        if model_type not in MODEL_CLASSES:
            raise UnsupportedFamilyError(
                f"the SmolVLM adapter loads {', '.join(MODEL_CLASSES)} models, not {model_type!r}"
            )
        self.model_type = model_type
        self._video = model_type == "smolvlm"
        # SmolVLMProcessor renders every video conversation with its own template.
        template = DEFAULT_CHAT_TEMPLATE if self._video else chat_template
        super().__init__(
            model=model,
            tokenizer=tokenizer,
            chat_template=template,
            transform=transform,
            placeholder="<video>" if self._video else "<image>",
            folder=folder,
        )
        self.settings = SmolVLMFrameSettings(transform=transform, first=first_resize)
        vision = config.vision_config
        image_size, patch = int(vision.image_size), int(vision.patch_size)
        if (transform.height, transform.width) != (image_size, image_size):
            raise IncompleteModelError(
                f"the image processor resizes frames to {transform.height}x{transform.width} but "
                f"the vision tower takes {image_size}x{image_size} images"
            )
        grid = image_size // patch
        self._scale = int(config.scale_factor)
        if grid % self._scale:
            raise IncompleteModelError(
                f"a {grid}x{grid} patch grid cannot be pixel-shuffled by {self._scale}"
            )
        self._inner = model.model
        self._tower = model.model.vision_model
        self._vision_spec = VisionSpec(
            image_size=(image_size, image_size),
            patch_size=patch,
            patch_grid=(grid, grid),
            hidden_size=int(vision.hidden_size),
            num_layers=int(vision.num_hidden_layers),
            feature_layers=(int(vision.num_hidden_layers),),
            token_grid=(grid // self._scale, grid // self._scale),
        )
        self._lm_spec = LMSpec.from_text_config(
            config.get_text_config(), rope="1d", dtype=self.dtype
        )
        self._activation = str(vision.hidden_act)
        self._fake = self._special(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self._global = self._special(tokenizer, "global_image_token", "<global-img>")

    @staticmethod
    def _special(tokenizer: Any, attribute: str, default: str) -> str:
        """A SmolVLM special token, named as ``SmolVLMProcessor`` finds it, checked to exist."""
        token = getattr(tokenizer, attribute, None) or default
        if not isinstance(token, str):
            raise IncompleteModelError(f"the tokenizer's {attribute} is not a token")
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise IncompleteModelError(
                f"the tokenizer has no single token for {token!r}; use the checkpoint's tokenizer"
            )
        return token

    @classmethod
    def from_folder(
        cls, folder: Path, *, device: torch.device, dtype: torch.dtype
    ) -> SmolVLMAdapter:
        model_type = str(read_config(folder)["model_type"])
        if model_type not in MODEL_CLASSES:
            raise UnsupportedFamilyError(
                f"{folder} is a {model_type!r} model; the SmolVLM adapter loads "
                f"{', '.join(MODEL_CLASSES)}"
            )
        settings = read_frame_settings(folder, model_type)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as exc:
            raise IncompleteModelError(
                f"cannot load the tokenizer in {folder} ({exc}); copy the checkpoint's tokenizer "
                "files into the folder"
            ) from exc
        try:
            chat_template = load_chat_template(folder, tokenizer)
        except IncompleteModelError:
            if model_type != "smolvlm":
                raise
            chat_template = DEFAULT_CHAT_TEMPLATE  # videos use the processor's template anyway
        try:
            model: Any = MODEL_CLASSES[model_type].from_pretrained(str(folder), dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise IncompleteModelError(f"cannot load the model weights in {folder}: {exc}") from exc
        model.to(device)
        return cls(
            model=model,
            tokenizer=tokenizer,
            chat_template=chat_template,
            transform=settings.transform,
            folder=folder,
            first_resize=settings.first,
        )

    # ------------------------------------------------------------------------------------ specs

    @property
    def vision_spec(self) -> VisionSpec:
        return self._vision_spec

    @property
    def lm_spec(self) -> LMSpec:
        return self._lm_spec

    # ----------------------------------------------------------------------------------- vision

    def preprocess(self, frames: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        return torch.from_numpy(preprocess_smolvlm_frames(frames, self.settings)).to(self.device)

    @cached_property
    def patch_embedding(self) -> PatchEmbedding:
        """The tower's patch embedding as a :mod:`cacher.layers` record."""
        emb = self._tower.embeddings
        table = emb.position_embedding.weight
        ids = library_position_ids(self._vision_spec.patch_grid[0]).to(table.device)
        position = (
            table if torch.equal(ids, torch.arange(len(ids), device=ids.device)) else table[ids]
        )
        return PatchEmbedding(
            weight=emb.patch_embedding.weight, bias=emb.patch_embedding.bias, position=position
        )

    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or tuple(pixels.shape[-2:]) != self._vision_spec.image_size:
            size = self._vision_spec.image_size
            raise InputError(
                f"pixels must be (F, 3, {size[0]}, {size[1]}), got {tuple(pixels.shape)}"
            )
        with torch.no_grad():
            return embed_patches(self.patch_embedding, pixels)

    @cached_property
    def vision_layers(self) -> tuple[EncoderLayer, ...]:
        return tuple(
            siglip_layer_record(layer, self._activation) for layer in self._tower.encoder.layers
        )

    @torch.no_grad()
    def tokens_from_hidden(self, hidden_states: Sequence[torch.Tensor]) -> list[VisualTokens]:
        if len(hidden_states) != 1:
            raise InputError(
                f"SmolVLM takes the last hidden state only, got {len(hidden_states)} hidden states"
            )
        features = self._tower.post_layernorm(hidden_states[0])
        shuffled = pixel_shuffle(features, self._vision_spec.patch_grid, self._scale)
        projected = self._inner.connector.modality_projection(shuffled)
        grid = self._vision_spec.token_grid
        return [VisualTokens(embeds=frame, grid=grid) for frame in projected]

    # ------------------------------------------------------------------------------------- text

    def embed_text(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(-1)
        with torch.no_grad():
            embeds: torch.Tensor = self._inner.get_input_embeddings()(index)
        return embeds

    def _ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def visual_chunk(
        self,
        tokens: VisualTokens,
        start: int,
        *,
        step: int = 0,
        seconds_per_step: float = 1.0,
    ) -> LMChunk:
        return self.sequential_chunk(tokens.embeds, start)  # 1-D: the step needs no offset

    def frame_open_text(self, timestamp: float) -> str:
        """The prompt text before a frame's visual tokens (see the module docstring)."""
        opening = self._fake + self._global
        if not self._video:
            return opening
        if not math.isfinite(timestamp) or timestamp < 0:
            raise InputError(f"a frame timestamp must be a time >= 0 in seconds, got {timestamp}")
        stamp = f"{int(timestamp // 60):02d}:{int(timestamp % 60):02d}"
        return FRAME_TIMESTAMP_MESSAGE.format(timestamp=stamp) + opening

    def frame_open_chunk(self, start: int, *, timestamp: float) -> LMChunk:
        return self.text_chunk(self._ids(self.frame_open_text(timestamp)), start)

    def frame_close_chunk(self, start: int) -> LMChunk:
        return self.text_chunk(self._ids(self._fake), start)

    def video_end_chunk(self, start: int) -> LMChunk:
        # SmolVLM2's "\n\n" after the last frame opens the suffix (see build_prompt).
        return self.empty_chunk(start)

    def build_prompt(self, question: str, *, system: str | None = None) -> PromptLayout:
        """The chat prompt around a video; the suffix starts with the video's closing text."""
        layout = build_prompt_layout(
            self.tokenizer,
            self.chat_template,
            question,
            self.placeholder,
            system=system,
            media="video" if self._video else "image",
        )
        prefix, suffix = layout.text.split(self.placeholder)
        if self._video:
            suffix = DEFAULT_MEDIA_OUTTRO + suffix
        return PromptLayout(
            prefix_ids=layout.prefix_ids,
            suffix_ids=tuple(self._ids(suffix)),
            text=prefix + self.placeholder + suffix,
        )

    # -------------------------------------------------------------------------------------- LLM

    @property
    def _decoder(self) -> Any:
        return self._inner.text_model

    @property
    def _lm_head(self) -> Any:
        return self.model.lm_head
