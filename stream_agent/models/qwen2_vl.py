"""Qwen2-VL and Qwen2.5-VL: a ViT over two-frame patches with 2-D rotary, 2x2 patch merging, and a
Qwen2 LLM with 3-D multimodal RoPE (M-RoPE). What the two families share lives in
:class:`QwenVLAdapter`; :class:`Qwen2VLAdapter` and :class:`Qwen2_5_VLAdapter` hold the differences.

**Frames.** Each frame is resized so that both sides are multiples of ``patch * merge`` (28) and the
pixel count lies within the checkpoint's ``min_pixels``/``max_pixels`` (the library's
``smart_resize``; the size therefore follows the input's aspect ratio), then rescaled and
normalised exactly like ``Qwen2VLImageProcessorPil`` (:class:`SmartResizeTransform`). Two
consecutive frames form one temporal patch (``temporal_patch_size`` 2): one *step* of visual tokens
covers a frame pair; an odd last frame is paired with itself, as the library does for a lone image
and for the last frame of an odd-length video.

**Token order.** The library lays a temporal patch's patches out in *merge-window order*: the 2x2
groups that the merger later concatenates are consecutive. Library row ``i`` is the patch at::

    block, within = i // 4, i % 4                      # m = 2, gw = patch columns
    row = (block // (gw // 2)) * 2 + within // 2
    col = (block %  (gw // 2)) * 2 + within %  2

(:func:`merge_window_to_raster`). Here the encoder keeps patches in **raster order** (row-major over
the patch grid, ``VisionSpec.patch_grid``), which is what a token-reuse cache compares frame to
frame; attention is permutation-equivariant once each token carries its own rotary angles and mask,
so only the merger needs the 2x2 groups, and :meth:`QwenVLAdapter.tokens_from_hidden` gathers them.
Its output, like the library's ``get_video_features``, is in raster order over the merged grid
(``VisualTokens.grid`` = patch grid / 2), which the pruner and the memory expect. Qwen2.5-VL's
window index permutation is not needed either: its windows become a per-layer attention mask over
raster-ordered tokens (:meth:`Qwen2_5_VLAdapter.vision_layer_masks`).

**Attention segments.** The library's vision attention never crosses temporal patches; here each
temporal patch is one batch row of the encoder (``embed_patches`` returns ``(steps, N, D)``), so no
segment mask is needed.

**Positions.** Text tokens get the same position in all three M-RoPE components. The visual tokens
of step ``k`` of a video that starts at position ``v`` get ``t = v + floor(k * interval)``,
``h = v + row``, ``w = v + col`` (``interval`` is 1 for Qwen2-VL and ``tokens_per_second *
seconds_per_step`` for Qwen2.5-VL), as the library's ``get_rope_index`` computes for the whole
video; :meth:`QwenVLAdapter.visual_chunk` computes them per step from the running position and the
step index, because the library only infers 3-D positions for an empty cache. Text after the video
continues at ``max(t, h, w) + 1`` over the video, the original Qwen2-VL rule; transformers 5.23
continues at ``v + max(rows, cols)`` instead, which is the same number unless the video is
temporally longer than it is wide (there 5.23 would place the question before the last frames, and
its own ``generate`` then jumps back to ``max + 1``).
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from transformers import (
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    smart_resize as library_smart_resize,
)

from cacher.layers import (
    MLP,
    EncoderLayer,
    FusedQKV,
    GatedMLP,
    LayerNorm,
    Linear,
    PatchEmbedding,
    RMSNorm,
    Rotary,
    embed_patches,
    group_mask,
)
from stream_agent.models.base import VideoLLM, placeholder_token
from stream_agent.models.errors import IncompleteModelError, InputError
from stream_agent.models.preprocess import (
    check_frame,
    frame_transform_from_settings,
    preprocess_frames,
)
from stream_agent.models.records import FrameTransform, LMChunk, LMSpec, VisionSpec, VisualTokens
from stream_agent.models.text import load_chat_template

#: The input frame size whose resized shape :attr:`QwenVLAdapter.vision_spec` describes (a 16:9
#: 360p stream) when a checkpoint is loaded; frames of other sizes are resized by the same rule and
#: carry their own grid (:meth:`QwenVLAdapter.vision_spec_for_frame`).
NOMINAL_FRAME_SIZE = (360, 640)

_SETTING_KEYS = (
    "size",
    "min_pixels",
    "max_pixels",
    "image_mean",
    "image_std",
    "rescale_factor",
    "resample",
    "do_resize",
    "do_rescale",
    "do_normalize",
    "patch_size",
    "merge_size",
    "temporal_patch_size",
)


# ------------------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class SmartResizeTransform(FrameTransform):
    """A :class:`FrameTransform` whose size follows each frame: both sides multiples of
    ``factor`` (patch x merge), pixel count within ``[min_pixels, max_pixels]``, aspect ratio kept
    as closely as possible (the library's ``smart_resize``).

    ``height`` x ``width`` is the resized size of :data:`NOMINAL_FRAME_SIZE`, the shape the
    adapter's :attr:`~QwenVLAdapter.vision_spec` describes.
    """

    min_pixels: int
    max_pixels: int
    factor: int

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The resized ``(height, width)`` of a ``height`` x ``width`` frame."""
        try:
            h, w = library_smart_resize(
                height, width, factor=self.factor, min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
            )  # fmt: skip
        except ValueError as exc:  # aspect ratio above 200
            raise InputError(f"cannot resize a {height}x{width} frame: {exc}") from exc
        return int(h), int(w)


def frame_target_size(transform: FrameTransform, height: int, width: int) -> tuple[int, int]:
    """The size ``transform`` resizes a ``height`` x ``width`` frame to."""
    if isinstance(transform, SmartResizeTransform):
        return transform.target_size(height, width)
    return transform.height, transform.width


def qwen_frame_transform(
    settings: Mapping[str, Any], nominal: tuple[int, int] = NOMINAL_FRAME_SIZE
) -> SmartResizeTransform:
    """The frame transform from a Qwen2-VL image/video processor's settings.

    ``settings`` are the processor's attributes (``to_dict()``): ``size`` with ``shortest_edge``
    (minimum pixels) and ``longest_edge`` (maximum pixels), or the older top-level ``min_pixels``
    / ``max_pixels`` (which win), plus mean/std, rescaling, resampling and the patch layout.
    """
    size = settings.get("size")
    size = dict(size) if isinstance(size, Mapping) else {}
    min_pixels = settings.get("min_pixels") or size.get("shortest_edge")
    max_pixels = settings.get("max_pixels") or size.get("longest_edge")
    if not min_pixels or not max_pixels:
        raise IncompleteModelError(
            f"the image processor's size {size!r} has no pixel bounds (shortest_edge and "
            "longest_edge, or min_pixels and max_pixels); copy the checkpoint's "
            "preprocessor_config.json"
        )
    if not settings.get("do_resize", True):
        raise IncompleteModelError(
            "the image processor does not resize (do_resize false); video frames need resizing "
            "to multiples of the patch size"
        )
    factor = int(settings.get("patch_size", 14)) * int(settings.get("merge_size", 2))
    height, width = library_smart_resize(
        *nominal, factor=factor, min_pixels=int(min_pixels), max_pixels=int(max_pixels)
    )
    base = frame_transform_from_settings(
        {**settings, "size": {"height": int(height), "width": int(width)}}
    )
    return SmartResizeTransform(
        **asdict(base), min_pixels=int(min_pixels), max_pixels=int(max_pixels), factor=factor
    )


def read_processor_settings(folder: Path) -> dict[str, Any]:
    """A Qwen2-VL checkpoint's frame settings: the image processor's (``preprocessor_config.json``,
    class defaults filling gaps), overridden by ``video_preprocessor_config.json`` where the folder
    has one, since frames take the video path."""
    if not (folder / "preprocessor_config.json").is_file():
        raise IncompleteModelError(
            f"{folder} has no preprocessor_config.json; copy the checkpoint's image processor "
            "config into the folder"
        )
    try:
        processor = Qwen2VLImageProcessorPil.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise IncompleteModelError(f"cannot read the image processor in {folder}: {exc}") from exc
    settings: dict[str, Any] = processor.to_dict()
    video = folder / "video_preprocessor_config.json"
    if video.is_file():
        try:
            overrides = json.loads(video.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IncompleteModelError(f"{video} is not valid JSON: {exc}") from exc
        settings.update({k: overrides[k] for k in _SETTING_KEYS if k in overrides})
    return settings


def patchify(
    pixels: torch.Tensor, *, patch_size: int, merge_size: int, temporal_patch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(F, C, h, w)`` -> the library's flat ``pixel_values_videos`` and ``grid_thw``.

    Rows are patches of ``temporal_patch_size`` frames, in merge-window order per temporal patch;
    columns ``(C, t, patch, patch)``. An incomplete last group of frames is padded with copies of
    the last frame (the video processor's rule; one frame alone is the image processor's).
    """
    frames, channels, height, width = pixels.shape
    if pad := -frames % temporal_patch_size:
        pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)])
    steps = pixels.shape[0] // temporal_patch_size
    gh, gw = height // patch_size, width // patch_size
    x = pixels.reshape(
        steps,
        temporal_patch_size,
        channels,
        gh // merge_size,
        merge_size,
        patch_size,
        gw // merge_size,
        merge_size,
        patch_size,
    ).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = x.reshape(steps * gh * gw, channels * temporal_patch_size * patch_size * patch_size)
    return flat, torch.tensor([[steps, gh, gw]], device=pixels.device)


def merge_window_to_raster(grid: tuple[int, int], merge_size: int = 2) -> torch.Tensor:
    """For each library patch row of one temporal patch (merge-window order), its raster index
    ``row * cols + col`` in the ``grid`` of patches."""
    rows, cols = grid
    i = torch.arange(rows * cols)
    unit = merge_size * merge_size
    block, within = i // unit, i % unit
    blocks_per_row = cols // merge_size
    row = (block // blocks_per_row) * merge_size + within // merge_size
    col = (block % blocks_per_row) * merge_size + within % merge_size
    return row * cols + col


# ------------------------------------------------------------------------------------ adapter


def _linear(module: Any) -> Linear:
    return Linear(module.weight, module.bias)


class QwenVLAdapter(VideoLLM):
    """What Qwen2-VL and Qwen2.5-VL share: frames, patch embedding, rotary angles, the merger, the
    LLM with M-RoPE, chunk positions and the prompt. Subclasses name the model class and build the
    encoder-layer records (and Qwen2.5-VL its window masks)."""

    model_class: ClassVar[Any]

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
        placeholder = placeholder_token(tokenizer, config.video_token_id)
        super().__init__(
            model=model,
            tokenizer=tokenizer,
            chat_template=chat_template,
            transform=transform,
            placeholder=placeholder,
            folder=folder,
        )
        self._inner = model.model
        self._visual = model.model.visual
        vision = config.vision_config
        self.patch_size = int(vision.patch_size)
        self.merge_size = int(vision.spatial_merge_size)
        self.temporal_patch_size = int(vision.temporal_patch_size)
        factor = self.patch_size * self.merge_size
        if isinstance(transform, SmartResizeTransform) and transform.factor != factor:
            raise IncompleteModelError(
                f"the image processor resizes frames to multiples of {transform.factor} but the "
                f"vision tower needs multiples of patch x merge = {factor}"
            )
        if transform.height % factor or transform.width % factor:
            raise IncompleteModelError(
                f"frames are resized to {transform.height}x{transform.width}, which is not a "
                f"multiple of patch x merge = {factor}"
            )
        # Hidden-state row count -> patch grid of the pixels last embedded, so that
        # tokens_from_hidden (which gets only tensors) knows the grid of frames of any size.
        self._grids: dict[int, tuple[int, int]] = {}
        nominal = self._patch_grid(transform.height, transform.width)
        self._grids[nominal[0] * nominal[1]] = nominal
        self._rotary_cache: dict[tuple[int, int], Rotary] = {}
        self._lm_spec = LMSpec.from_text_config(
            config.get_text_config(), rope="mrope", dtype=self.dtype, default_theta=1000000.0
        )

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def transform_from_processor(cls, processor: Any) -> FrameTransform:
        return qwen_frame_transform(processor.to_dict())

    @classmethod
    def from_folder(cls, folder: Path, *, device: torch.device, dtype: torch.dtype) -> VideoLLM:
        transform = qwen_frame_transform(read_processor_settings(folder))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, TypeError) as exc:
            raise IncompleteModelError(
                f"cannot load the tokenizer in {folder} ({exc}); copy the checkpoint's tokenizer "
                "files into the folder"
            ) from exc
        chat_template = load_chat_template(folder, tokenizer)
        try:
            model: Any = cls.model_class.from_pretrained(str(folder), dtype=dtype)
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

    def _patch_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def vision_spec_for_size(self, height: int, width: int) -> VisionSpec:
        """The vision path's shapes for frames already resized to ``height`` x ``width``."""
        gh, gw = self._patch_grid(height, width)
        return VisionSpec(
            image_size=(height, width),
            patch_size=self.patch_size,
            patch_grid=(gh, gw),
            hidden_size=int(self._visual.patch_embed.embed_dim),
            num_layers=len(self._visual.blocks),
            feature_layers=(len(self._visual.blocks),),
            token_grid=(gh // self.merge_size, gw // self.merge_size),
            frames_per_step=self.temporal_patch_size,
        )

    def vision_spec_for_frame(self, height: int, width: int) -> VisionSpec:
        """The vision path's shapes for input frames of ``height`` x ``width`` pixels."""
        return self.vision_spec_for_size(*frame_target_size(self.transform, height, width))

    @property
    def vision_spec(self) -> VisionSpec:
        """The shapes for frames resized to the transform's nominal size (see
        :data:`NOMINAL_FRAME_SIZE`); :meth:`vision_spec_for_frame` gives them for other sizes."""
        return self.vision_spec_for_size(self.transform.height, self.transform.width)

    @property
    def lm_spec(self) -> LMSpec:
        return self._lm_spec

    # ----------------------------------------------------------------------------------- vision

    def preprocess(self, frames: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """RGB frames -> pixels ``(F, 3, h, w)``, each frame smart-resized; all frames of one call
        must come out the same size (frames of one stream do)."""
        if len(frames) == 0:
            raise InputError("no frames to preprocess")
        sizes = {frame_target_size(self.transform, *check_frame(f).shape[:2]) for f in frames}
        if len(sizes) != 1:
            raise InputError(
                f"frames of one call resize to different sizes {sorted(sizes)}; "
                "pass frames of one size"
            )
        height, width = sizes.pop()
        transform = replace(self.transform, height=height, width=width)
        return torch.from_numpy(preprocess_frames(frames, transform)).to(self.device)

    def _check_pixels(self, pixels: torch.Tensor) -> tuple[int, int]:
        factor = self.patch_size * self.merge_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[0] == 0:
            raise InputError(f"pixels must be (F, 3, h, w), got {tuple(pixels.shape)}")
        height, width = int(pixels.shape[2]), int(pixels.shape[3])
        if height % factor or width % factor:
            raise InputError(
                f"pixels of {height}x{width} are not multiples of {factor}; use preprocess()"
            )
        grid = self._patch_grid(height, width)
        self._grids[grid[0] * grid[1]] = grid
        return grid

    def _pair_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(F, C, h, w)`` -> ``(steps, C * t, h, w)``, channel ``c * t + i`` = frame ``i`` of
        the step (the Conv3d kernel's ``(C, t)`` order); an odd last frame is repeated."""
        tps = self.temporal_patch_size
        if pad := -pixels.shape[0] % tps:
            pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)])
        frames, channels, height, width = pixels.shape
        x = pixels.reshape(frames // tps, tps, channels, height, width).transpose(1, 2)
        return x.reshape(frames // tps, channels * tps, height, width)

    @cached_property
    def patch_embedding(self) -> PatchEmbedding:
        """The Conv3d over ``t x patch x patch`` as a 2-D patch convolution over the ``C * t``
        channels of a frame pair (a view of the model's own kernel; no bias, no positions)."""
        weight = self._visual.patch_embed.proj.weight
        dim, channels, tps, p, _ = weight.shape
        return PatchEmbedding(
            weight=weight.reshape(dim, channels * tps, p, p), bias=None, position=None
        )

    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``(F, 3, h, w)`` -> ``(steps, N, D)``: one row per frame pair (temporal patch),
        patches in raster order."""
        self._check_pixels(pixels)
        with torch.no_grad():
            return embed_patches(self.patch_embedding, self._pair_frames(pixels))

    def rotary_for_grid(self, grid: tuple[int, int]) -> Rotary:
        """The 2-D rotary angles ``(N, head_dim)`` of a raster-ordered patch grid, computed by the
        tower's own ``rotary_pos_emb`` (row then column frequencies)."""
        if grid not in self._rotary_cache:
            rows, cols = grid
            r = torch.arange(rows, device=self.device).repeat_interleave(cols)
            c = torch.arange(cols, device=self.device).repeat(rows)
            with torch.no_grad():
                cos, sin = self._visual.rotary_pos_emb(r, torch.stack([r, c], dim=-1))
            self._rotary_cache[grid] = Rotary(cos, sin)
        return self._rotary_cache[grid]

    def vision_attention(self, pixels: torch.Tensor) -> tuple[Rotary | None, torch.Tensor | None]:
        """2-D rotary angles of the patch grid; no mask (each batch row is one temporal patch,
        the library's attention segment). Qwen2.5-VL's windowed layers add masks in
        :meth:`vision_layer_masks`."""
        return self.rotary_for_grid(self._check_pixels(pixels)), None

    @cached_property
    def vision_layers(self) -> tuple[EncoderLayer, ...]:
        return tuple(self._layer_record(block) for block in self._visual.blocks)

    @abstractmethod
    def _layer_record(self, block: Any) -> EncoderLayer:
        """A :class:`cacher.layers.EncoderLayer` referencing one vision block's weights."""

    def _grid_of(self, rows: int, grid: tuple[int, int] | None) -> tuple[int, int]:
        if grid is not None:
            if grid[0] * grid[1] != rows:
                raise InputError(f"a {grid} patch grid does not hold {rows} hidden-state rows")
            return grid
        try:
            return self._grids[rows]
        except KeyError:
            raise InputError(
                f"no patch grid of {rows} patches seen; pass grid=(rows, cols)"
            ) from None

    @torch.no_grad()
    def tokens_from_hidden(
        self, hidden_states: Sequence[torch.Tensor], grid: tuple[int, int] | None = None
    ) -> list[VisualTokens]:
        """The merger over 2x2 patch groups: last hidden state ``(steps, N, D)`` (raster order) ->
        one :class:`VisualTokens` per step, in raster order over the merged grid.

        ``grid`` is the patch grid; by default the grid of the pixels last embedded with ``N``
        patches (or the nominal one).
        """
        if len(hidden_states) != 1:
            raise InputError(f"expected the last hidden state only, got {len(hidden_states)}")
        hidden = hidden_states[0]
        steps, rows, dim = hidden.shape
        gh, gw = self._grid_of(rows, grid)
        m = self.merge_size
        if gh % m or gw % m:
            raise InputError(f"a {gh}x{gw} patch grid cannot be merged in {m}x{m} groups")
        groups = hidden.reshape(steps, gh // m, m, gw // m, m, dim).permute(0, 1, 3, 2, 4, 5)
        merged = self._visual.merger(groups.reshape(-1, dim))
        merged = merged.reshape(steps, (gh // m) * (gw // m), -1)
        token_grid = (gh // m, gw // m)
        return [
            VisualTokens(embeds=step, grid=token_grid, frames=self.temporal_patch_size)
            for step in merged
        ]

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> list[VisualTokens]:
        """Full vision path; the last step of an odd number of frames covers one frame."""
        tokens = super().encode_pixels(pixels)
        if short := pixels.shape[0] % self.temporal_patch_size:
            last = tokens[-1]
            tokens[-1] = VisualTokens(embeds=last.embeds, grid=last.grid, frames=short)
        return tokens

    def patchify(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels -> the library's ``pixel_values_videos`` and ``video_grid_thw`` (for comparing
        with, or feeding, the library's own forward)."""
        self._check_pixels(pixels)
        return patchify(
            pixels,
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            temporal_patch_size=self.temporal_patch_size,
        )

    # ------------------------------------------------------------------------------------- text

    def embed_text(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(-1)
        with torch.no_grad():
            embeds: torch.Tensor = self._inner.get_input_embeddings()(index)
        return embeds

    def text_chunk(self, ids: Sequence[int] | torch.Tensor, start: int) -> LMChunk:
        """Text at ``start, start + 1, ...`` in all three position components."""
        embeds = self.embed_text(ids)
        length = int(embeds.shape[0])
        positions = torch.arange(start, start + length, device=self.device).expand(3, -1)
        return LMChunk(embeds.to(self.dtype), positions.contiguous(), start + length)

    def time_interval(self, seconds_per_step: float) -> float:
        """How far the temporal position advances per step (Qwen2-VL: 1)."""
        return 1.0

    def _temporal_offset(self, step: int, interval: float) -> int:
        # the library's float32 arithmetic: (arange(T) * interval).long()
        return int((torch.tensor([step]) * interval).long().item())

    def visual_chunk(
        self,
        tokens: VisualTokens,
        start: int,
        *,
        step: int = 0,
        seconds_per_step: float = 1.0,
    ) -> LMChunk:
        """Step ``step`` (0-based) of a video, placed after the running position ``start``.

        For ``step`` 0, ``start`` is where the video begins (the position after
        ``<|vision_start|>``); for later steps it must be the previous step's
        ``next_position``, from which the video's start is recovered. Positions are the library's
        for the whole video (see the module docstring); ``next_position`` is where text after the
        video continues. ``seconds_per_step`` (Qwen2.5-VL only) is the time one step covers
        (``temporal_patch_size / sampling fps``; the library's default is 1). Without ``step``,
        every step starts a video of its own at ``start``.
        """
        if step < 0:
            raise InputError(f"step must be >= 0, got {step}")
        rows, cols = tokens.grid
        extent = max(rows, cols)
        interval = self.time_interval(seconds_per_step)
        if step == 0:
            video_start = start
        else:
            previous = self._temporal_offset(step - 1, interval)
            video_start = start - max(extent, previous + 1)
        if video_start < 0:
            raise InputError(
                f"start {start} is not the next_position of step {step - 1} of a video"
            )
        offset = self._temporal_offset(step, interval)
        r = torch.arange(rows, device=self.device).repeat_interleave(cols)
        c = torch.arange(cols, device=self.device).repeat(rows)
        positions = torch.stack([torch.full_like(r, offset), r, c]) + video_start
        next_position = video_start + max(extent, offset + 1)
        return LMChunk(tokens.embeds.to(self.dtype), positions, next_position)

    def video_end_chunk(self, start: int) -> LMChunk:
        """Empty: ``<|vision_end|>`` is the first token of the prompt's suffix."""
        return self.empty_chunk(start)

    # -------------------------------------------------------------------------------------- LLM

    @property
    def _decoder(self) -> Any:
        return self._inner.language_model

    @property
    def _lm_head(self) -> Any:
        return self.model.lm_head

    def _lm_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """``(3, L)`` -> ``(3, 1, L)``: explicit t/h/w positions, so the text model never infers
        its own (it would from the cache length). The text model needs nothing else: token types
        and ``rope_deltas`` only feed ``Qwen2VLModel.forward``'s position inference, which the
        adapter never calls."""
        return positions[:, None, :]


class Qwen2VLAdapter(QwenVLAdapter):
    """Qwen2-VL (``Qwen2VLForConditionalGeneration``): pre-LN blocks with LayerNorm, a fused qkv
    projection and a two-layer MLP; full attention within each temporal patch."""

    family = "qwen2_vl"
    model_class = Qwen2VLForConditionalGeneration

    def _layer_record(self, block: Any) -> EncoderLayer:
        attn = block.attn
        return EncoderLayer(
            norm1=LayerNorm(block.norm1.weight, block.norm1.bias, float(block.norm1.eps)),
            qkv=FusedQKV(_linear(attn.qkv)),
            out=_linear(attn.proj),
            norm2=LayerNorm(block.norm2.weight, block.norm2.bias, float(block.norm2.eps)),
            mlp=MLP(_linear(block.mlp.fc1), _linear(block.mlp.fc2), self._activation),
            num_heads=int(attn.num_heads),
            head_dim=int(attn.head_dim),
            scale=float(attn.scaling),
        )

    @property
    def _activation(self) -> str:
        return str(self.model.config.vision_config.hidden_act)


class Qwen2_5_VLAdapter(QwenVLAdapter):
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): RMSNorm, a gated MLP, and window
    attention in all layers but ``fullatt_block_indexes``; temporal positions spaced by
    ``tokens_per_second`` x seconds per step."""

    family = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        chat_template: str,
        transform: FrameTransform,
        folder: Path | None = None,
    ) -> None:
        super().__init__(
            model=model,
            tokenizer=tokenizer,
            chat_template=chat_template,
            transform=transform,
            folder=folder,
        )
        vision = model.config.vision_config
        self.window = int(vision.window_size) // self.merge_size // self.patch_size
        if self.window < 1:
            raise IncompleteModelError(
                f"window_size {vision.window_size} is smaller than one merged patch "
                f"({self.merge_size * self.patch_size} pixels)"
            )
        self.full_attention_layers = frozenset(int(i) for i in vision.fullatt_block_indexes)
        self.tokens_per_second = float(vision.tokens_per_second)

    def _layer_record(self, block: Any) -> EncoderLayer:
        attn, mlp = block.attn, block.mlp
        return EncoderLayer(
            norm1=RMSNorm(block.norm1.weight, float(block.norm1.variance_epsilon)),
            qkv=FusedQKV(_linear(attn.qkv)),
            out=_linear(attn.proj),
            norm2=RMSNorm(block.norm2.weight, float(block.norm2.variance_epsilon)),
            mlp=GatedMLP(
                _linear(mlp.gate_proj),
                _linear(mlp.up_proj),
                _linear(mlp.down_proj),
                str(self.model.config.vision_config.hidden_act),
            ),
            num_heads=int(attn.num_heads),
            head_dim=int(attn.head_dim),
            scale=float(attn.scaling),
        )

    def window_ids(self, grid: tuple[int, int]) -> torch.Tensor:
        """The attention window of each raster-ordered patch: windows of ``window`` x ``window``
        merged patches from the top-left corner (partial windows at the bottom and right edges),
        the library's ``get_vision_window_index`` grouping."""
        rows, cols = grid
        span = self.window * self.merge_size  # patches per window side
        r = torch.arange(rows, device=self.device).repeat_interleave(cols)
        c = torch.arange(cols, device=self.device).repeat(rows)
        return (r // span) * math.ceil(cols / span) + c // span

    def vision_layer_masks(self, pixels: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The window mask for windowed layers, ``None`` (the whole temporal patch) for the
        ``fullatt_block_indexes`` layers."""
        windows = group_mask(self.window_ids(self._check_pixels(pixels)))
        return tuple(
            None if i in self.full_attention_layers else windows
            for i in range(len(self.vision_layers))
        )

    def time_interval(self, seconds_per_step: float) -> float:
        """``tokens_per_second * seconds_per_step`` (the library's ``second_per_grid_t``)."""
        if seconds_per_step <= 0:
            raise InputError(f"seconds_per_step must be positive, got {seconds_per_step}")
        return self.tokens_per_second * seconds_per_step
