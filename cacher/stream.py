"""STC-Cacher for one stream: encode frames layer by layer, reusing a reference frame's work.

A :class:`StreamCacher` holds one stream's reference (:mod:`cacher.state`) and encodes each new
frame's patch embeddings with the encoder layers (:mod:`cacher.layers` records), in one of three
modes (:class:`cacher.config.CacherConfig`):

``paper`` -- the released STC-Cacher (``lern-to-write/STC``, ``model/custom_siglip.py``; see
``/work/shared/reference/methods.md`` section 1.1). Every ``cache_interval``-th frame runs in full
and becomes the reference. On the other frames, at every layer ``l`` (x = this frame's own input
to layer ``l``)::

    K  = k_proj(norm1(x))                         for all tokens (the selector needs them)
    s  = cos(K[t], K_ref[t])                      per token (per group: mean over the group)
    I  = the max(1, int(T * r)) tokens with the lowest s, chosen afresh at this layer
    Q_I, V_I = q_proj, v_proj of norm1(x[I]);     V = V_ref with V[I] = V_I
    A  = A_ref with A[I] = out_proj(attention(Q_I, K, V))   # queries I over all T keys/values
    h  = x + A
    out = h + (M_ref with M[I] = mlp(norm2(h[I])))

So, as in the released code, the keys of *static* tokens in the attention are the frame's fresh
keys (computed anyway for the selector), while their values are the reference's ``V_ref``; static
tokens get their current residual plus the reference's cached branch outputs. Frames come one per
call (the released ReKV+STC setting ``encode_chunk_size = 1``), the frame counter restarts at a
reset. With rotary angles (Qwen2-VL) K and K_ref are compared after rotation; a token keeps its
angles from frame to frame, and the same rotation on both sides leaves their cosine unchanged.

``adaptive`` -- the same layer maths with a threshold instead of a fixed share, a cheaper selector
and reference refresh on change (see :class:`cacher.config.AdaptiveOptions`). A token's change at
layer ``l`` is ``1 - cos(norm1(x), norm1(x_ref))`` against the reference's own input to layer
``l`` (rebuilt as ``embeds_ref + sum of A_ref + M_ref``, exactly the reference forward's adds), so
no key projection is spent on tokens that stay static; the static tokens' keys in the attention
are the reference's ``K_ref`` (the changed tokens' fresh keys are scattered in, like their
values). At layer 0 the same change decides for the whole frame: nothing changed -> reuse the
reference's hidden states whole; more than ``max_ratio`` changed (a cut, a moving camera) or mean
similarity of the unchanged tokens under ``drift_similarity``, or changes that came to rest
having cost ``settle_cost`` frames of recompute (tokens that differ from the reference but not from
the previous frame), or the reference too old -> full encode, new reference.

``off`` -- every frame in full, nothing kept.

The unit of reuse is a group of ``group_size`` tokens (``group_layout``: consecutive runs, or
square windows over a raster grid the frame passes as ``grid``): Qwen2-VL's merger concatenates
each 2x2 window of patches, so a window is recomputed or reused whole. One call encodes one frame;
for Qwen2-VL that is one temporal patch, i.e. a frame pair (one row of the adapter's
``embed_patches`` output). Rotary angles and attention masks (as ``VideoLLM.vision_attention``
returns them; one mask for all layers or one per layer) apply to the frame's tokens; the rows of
the recomputed tokens are taken from them.

Preemption: ``encode(..., yield_point=f)`` calls ``f()`` after every ``config.yield_every``-th
layer of a frame that runs layers (never after the last one, never for a frame reused whole), so
that the engine thread that owns the model can serve a waiting question in the middle of a
frame's encode -- synchronously, inside the callback: a question waits at most one layer group,
not one frame. The callback must not use this cacher (a nested ``encode`` raises
:class:`EncoderError`); it may use the model's other parts freely, since the encode holds only
its own tensors between layers, so the result is bit-identical with and without it. If the
callback raises, the frame is abandoned: the reference is dropped (the next frame becomes a new
one) and the exception propagates.

Not thread-safe: one engine thread owns a stream's cacher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from cacher.config import CacherConfig
from cacher.errors import EncoderError, FrameError
from cacher.layers import (
    EncoderLayer,
    Rotary,
    attend,
    mlp_branch,
    norm,
    project_keys,
    project_out,
    project_qkv,
    project_queries_values,
)
from cacher.records import CachedEncoding, CacherCounters, FrameKind, FrameStats, RefreshReason
from cacher.selection import (
    Grouping,
    consecutive_groups,
    lowest,
    over_threshold,
    token_cosine,
    window_groups,
)
from cacher.state import LayerReference, Reference, reference_bytes

log = logging.getLogger(__name__)

Tensor = torch.Tensor
Masks = tuple[Tensor | None, ...]
YieldPoint = Callable[[], None]
MaskArg = Tensor | Sequence[Tensor | None] | None


def resolve_keep(keep: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Hidden-state indices with negatives resolved (``-1`` = last layer's output)."""
    total = num_layers + 1
    resolved = tuple(int(i) + total if int(i) < 0 else int(i) for i in keep)
    for i, original in zip(resolved, keep, strict=True):
        if not 0 <= i < total:
            raise EncoderError(
                f"hidden-state index {original} is out of range for an encoder of {num_layers} "
                f"layers (0 = the input, {num_layers} = the last layer's output)"
            )
    if not resolved:
        raise EncoderError("ask for at least one hidden state (keep=(-1,) for the last layer)")
    return resolved


def input_change(layer: EncoderLayer, current: Tensor, reference: Tensor) -> Tensor:
    """``1 - cos(norm1(current), norm1(reference))`` per token ``(N,)``, float32."""
    return 1.0 - token_cosine(norm(layer.norm1, current), norm(layer.norm1, reference))


def _mask_rows(mask: Tensor | None, rows: Tensor, tokens: int) -> Tensor | None:
    """The mask rows of the query tokens ``rows`` (a mask with a broadcast row dim is kept)."""
    if mask is None or mask.shape[-2] != tokens:
        return mask
    return mask.index_select(mask.ndim - 2, rows)


@dataclass(frozen=True, slots=True, eq=False)
class _Frame:
    """A checked frame: hidden state ``(1, N, D)`` and what its attention needs."""

    x: Tensor
    rotary: Rotary | None
    masks: Masks
    grid: tuple[int, int] | None
    grouping: Grouping

    @property
    def tokens(self) -> int:
        return int(self.x.shape[1])

    def rotary_rows(self, rows: Tensor) -> Rotary | None:
        return None if self.rotary is None else self.rotary.rows(rows)


class StreamCacher:
    """One stream's STC-Cacher over an encoder's layers.

    ``layers`` are the encoder's layer records (``VideoLLM.vision_layers``); ``keep`` the hidden
    states to return (``VideoLLM.vision_spec.feature_layers``; 0 = input, ``j`` = output of layer
    ``j``, negatives from the end). Only the layers up to the deepest kept index are run.
    """

    def __init__(
        self,
        layers: Sequence[EncoderLayer],
        config: CacherConfig,
        *,
        keep: Sequence[int] = (-1,),
        stream_id: str = "",
    ) -> None:
        if not layers:
            raise EncoderError("the encoder has no layers; pass the model's vision layer records")
        width = layers[0].hidden_size
        for i, layer in enumerate(layers):
            if layer.hidden_size != width:
                raise EncoderError(
                    f"encoder layer {i} has width {layer.hidden_size} but layer 0 has {width}; "
                    "pass the layers of one encoder"
                )
        self.config = config
        self.stream_id = stream_id
        self.keep = resolve_keep(keep, len(layers))
        self.layers: tuple[EncoderLayer, ...] = tuple(layers[: max(max(self.keep), 1)])
        first = self.layers[0].norm1.weight  # a norm is never quantized (see layers.Linear)
        self.dtype: torch.dtype = first.dtype
        self.device: torch.device = first.device
        self.width = width
        self.storage_dtype = config.storage_dtype(self.dtype)
        self._reference: Reference | None = None
        self._previous: Tensor | None = None  # the last frame's input (adaptive: "settled")
        self._settled = 0.0  # summed share of settled changes since the reference (adaptive)
        self._index = 0
        self._counters = CacherCounters()
        self._groupings: dict[tuple[int, tuple[int, int] | None], Grouping] = {}
        self._yield_point: YieldPoint | None = None
        self._encoding = False

    # ------------------------------------------------------------------------------- reporting

    @property
    def counters(self) -> CacherCounters:
        """Totals since this cacher was created."""
        return self._counters

    @property
    def state_bytes(self) -> int:
        """Bytes of the cached reference (and previous frame) now held (0 when none)."""
        if self._reference is None:
            return 0
        previous = (
            0 if self._previous is None else self._previous.numel() * self._previous.element_size()
        )
        return self._reference.nbytes + previous

    def state_bytes_for(self, tokens: int) -> int:
        """Bytes the reference will take for frames of ``tokens`` tokens (0 in ``off`` mode)."""
        if self.config.mode == "off":
            return 0
        return reference_bytes(
            self.layers,
            tokens,
            compute_dtype=self.dtype,
            storage_dtype=self.storage_dtype,
            kept=len(self.keep) if self.config.mode == "adaptive" else 0,
            previous=self.config.mode == "adaptive",
        )

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    # ---------------------------------------------------------------------------------- control

    def reset(self) -> None:
        """Forget the reference (call when the source reconnects or changes)."""
        if self._reference is not None:
            log.info("cacher stream %r: reference dropped (reset)", self.stream_id)
        self._drop()

    def _drop(self) -> None:
        if self._reference is not None:
            self._count(resets=1)
        self._reference = None
        self._previous = None
        self._index = 0

    def _count(self, **increments: int) -> None:
        self._counters = replace(
            self._counters,
            **{name: getattr(self._counters, name) + n for name, n in increments.items()},
        )

    # ----------------------------------------------------------------------------------- encode

    @torch.no_grad()
    def encode(
        self,
        embeds: Tensor,
        *,
        rotary: Rotary | None = None,
        mask: MaskArg = None,
        grid: tuple[int, int] | None = None,
        yield_point: YieldPoint | None = None,
    ) -> CachedEncoding:
        """Encode one frame's patch embeddings ``(N, D)`` or ``(1, N, D)``.

        ``rotary`` (angles of the frame's N tokens) and ``mask`` (boolean, True = may attend,
        last two dims ``(N, N)`` or ``(1, N)``; one for all layers, or a sequence with one per
        layer, ``None`` entries for full attention) are used as
        :func:`cacher.layers.encoder_forward` uses them. ``grid`` (patch rows, cols) is needed
        with ``group_layout="window"``. ``yield_point`` is called between layer groups (see the
        module docstring). Raises :class:`FrameError` (after dropping the reference) for a frame
        that cannot be encoded.
        """
        if self._encoding:
            raise EncoderError(
                f"cacher stream {self.stream_id!r} is already encoding a frame; a yield_point "
                "callback must not encode on the same stream"
            )
        self._encoding = True
        self._yield_point = yield_point
        try:
            return self._encode(embeds, rotary, mask, grid)
        except BaseException:
            if yield_point is not None:
                self._drop()  # the frame may have been abandoned half-way by the callback
            raise
        finally:
            self._encoding = False
            self._yield_point = None

    def _encode(
        self,
        embeds: Tensor,
        rotary: Rotary | None,
        mask: MaskArg,
        grid: tuple[int, int] | None,
    ) -> CachedEncoding:
        try:
            frame = self._check_frame(embeds, rotary, mask, grid)
        except FrameError:
            self._drop()
            self._count(rejected_frames=1)
            raise
        index = self._index
        self._index += 1
        if self.config.mode == "off":
            return self._full(frame, index=index, store=False, reason=None, change=None)
        ref = self._reference
        if ref is None:
            return self._full(frame, index=index, store=True, reason="first", change=None)
        if not ref.same_layout(frame.x, frame.rotary, frame.masks, frame.grid):
            log.info(
                "cacher stream %r: a frame of %d tokens (grid %s) does not match the reference "
                "(%d tokens, grid %s, or other rotary angles or masks); encoding it as a new "
                "reference",
                self.stream_id,
                frame.tokens,
                frame.grid,
                ref.tokens,
                ref.grid,
            )
            self._drop()
            self._index = 1
            return self._full(frame, index=0, store=True, reason="shape", change=None)
        change = input_change(self.layers[0], frame.x, ref.embeds)
        if self.config.mode == "paper":
            if ref.age + 1 >= self.config.cache_interval:
                return self._full(frame, index=index, store=True, reason="interval", change=change)
            ref.age += 1
            return self._paper(frame, ref, index=index, change=change)
        previous, self._previous = self._previous, frame.x
        return self._adaptive(frame, ref, previous, index=index, change=change)

    def encode_many(
        self,
        embeds: Tensor,
        *,
        rotary: Rotary | None = None,
        mask: MaskArg = None,
        grid: tuple[int, int] | None = None,
        yield_point: YieldPoint | None = None,
    ) -> list[CachedEncoding]:
        """Encode frames ``(F, N, D)`` in order, each as :meth:`encode` (same rotary, masks,
        grid and ``yield_point``), e.g. the steps of one ``embed_patches`` call."""
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
            shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds)
            raise FrameError(f"encode_many takes (frames, tokens, width), got {shape}")
        return [
            self.encode(
                embeds[i : i + 1], rotary=rotary, mask=mask, grid=grid, yield_point=yield_point
            )
            for i in range(embeds.shape[0])
        ]

    # ---------------------------------------------------------------------------------- checks

    def _check_frame(
        self,
        embeds: Tensor,
        rotary: Rotary | None,
        mask: MaskArg,
        grid: tuple[int, int] | None,
    ) -> _Frame:
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
            raise FrameError("patch embeddings must be a floating-point tensor (N, D)")
        x = embeds[None] if embeds.ndim == 2 else embeds
        if x.ndim != 3 or x.shape[0] != 1:
            raise FrameError(
                f"pass one frame at a time as (N, D) or (1, N, D), got {tuple(embeds.shape)}; "
                "use encode_many for several frames"
            )
        tokens, width = int(x.shape[1]), int(x.shape[2])
        if width != self.width:
            raise FrameError(
                f"patch embeddings have width {width} but the encoder takes {self.width}; "
                "embed the frame with the same model's patch embedding"
            )
        if x.dtype != self.dtype or x.device != self.device:
            raise FrameError(
                f"patch embeddings are {x.dtype} on {x.device} but the encoder is {self.dtype} "
                f"on {self.device}; move them to the model's device and dtype"
            )
        grouping = self._grouping(tokens, grid)
        if rotary is not None:
            head_dim = self.layers[0].head_dim
            for name, t in (("cos", rotary.cos), ("sin", rotary.sin)):
                if tuple(t.shape) != (tokens, head_dim):
                    raise FrameError(
                        f"rotary {name} has shape {tuple(t.shape)}, expected ({tokens}, "
                        f"{head_dim}) for this frame; pass the angles of this frame's tokens"
                    )
        masks = self._check_masks(mask, tokens)
        if not bool(torch.isfinite(x).all()):
            raise FrameError("patch embeddings contain NaN or infinite values; frame dropped")
        return _Frame(x, rotary, masks, grid, grouping)

    def _grouping(self, tokens: int, grid: tuple[int, int] | None) -> Grouping:
        size = self.config.group_size
        window = self.config.group_layout == "window" and size > 1
        if grid is not None:
            if len(grid) != 2 or int(grid[0]) * int(grid[1]) != tokens:
                raise FrameError(f"a patch grid {grid} does not hold the frame's {tokens} tokens")
            grid = (int(grid[0]), int(grid[1]))
        key = (tokens, grid if window else None)
        if key in self._groupings:
            return self._groupings[key]
        if window:
            side = self.config.window_side
            if grid is None:
                raise FrameError(
                    "group_layout='window' needs each frame's patch grid: pass grid=(rows, cols)"
                )
            if grid[0] % side or grid[1] % side:
                raise FrameError(
                    f"a {grid[0]}x{grid[1]} patch grid cannot be split in {side}x{side} windows"
                )
            grouping = window_groups(grid, side, self.device)
        else:
            if tokens == 0 or tokens % size:
                raise FrameError(
                    f"{tokens} tokens cannot be split into groups of {size}; "
                    "check cacher.group_size for this model"
                )
            grouping = consecutive_groups(size)
        if len(self._groupings) >= 8:  # a stream sees one or two layouts; keep it bounded
            self._groupings.clear()
        self._groupings[key] = grouping
        return grouping

    def _check_masks(self, mask: MaskArg, tokens: int) -> Masks:
        if mask is None or isinstance(mask, torch.Tensor):
            masks: Masks = (mask,) * len(self.layers)
        else:
            masks = tuple(mask)[: len(self.layers)]
            if len(masks) != len(self.layers):
                raise FrameError(
                    f"{len(tuple(mask))} per-layer masks for an encoder of {len(self.layers)} "
                    "layers; pass one mask per layer (None for full attention)"
                )
        for m in masks:
            if m is None:
                continue
            if not isinstance(m, torch.Tensor) or (
                m.ndim < 2 or m.shape[-1] != tokens or m.shape[-2] not in (1, tokens)
            ):
                shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m)
                raise FrameError(
                    f"attention mask has shape {shape}, expected (..., {tokens}, {tokens}) for "
                    "this frame"
                )
        return masks

    # ---------------------------------------------------------------------------- the three ways

    def _full(
        self,
        frame: _Frame,
        *,
        index: int,
        store: bool,
        reason: RefreshReason | None,
        change: Tensor | None,
    ) -> CachedEncoding:
        """All layers on all tokens (exactly :func:`cacher.layers.layer_forward`'s maths),
        keeping the reference when ``store``."""
        x = frame.x
        kept: dict[int, Tensor] = {0: x} if 0 in self.keep else {}
        saved: list[LayerReference] = []
        h = x
        for j, (layer, mask) in enumerate(zip(self.layers, frame.masks, strict=True), start=1):
            qkv = project_qkv(layer, h, frame.rotary)
            a = project_out(layer, attend(layer, qkv.q, qkv.k, qkv.v, mask))
            h = h + a
            m = mlp_branch(layer, h)
            h = h + m
            if store:
                saved.append(
                    LayerReference(
                        keys=self._own(qkv.k),
                        values=self._own(qkv.v),
                        attention=self._own(a),
                        mlp=self._own(m),
                    )
                )
            if j in self.keep:
                kept[j] = h
            self._between_layers(j)
        hidden = tuple(kept[i] for i in self.keep)
        tokens = frame.tokens
        if store:
            self._previous = x if self.config.mode == "adaptive" else None
            self._settled = 0.0
            self._reference = Reference(
                embeds=x,
                layers=tuple(saved),
                kept=hidden if self.config.mode == "adaptive" else None,
                rotary=frame.rotary,
                masks=frame.masks,
                grid=frame.grid,
            )
        kind: FrameKind = "reference" if store else "full"
        stats = self._stats(
            index=index,
            kind=kind,
            reason=reason,
            tokens=tokens,
            age=0,
            per_layer=(tokens,) * len(self.layers),
            similarity=(),
            recomputed=torch.ones(tokens, dtype=torch.bool, device=x.device),
            change=change,
        )
        self._count(
            frames=1,
            full_frames=int(kind == "full"),
            reference_frames=int(kind == "reference"),
            token_layers=tokens * len(self.layers),
            recomputed_token_layers=tokens * len(self.layers),
        )
        return CachedEncoding(hidden_states=hidden, keep=self.keep, stats=stats)

    def _between_layers(self, done: int) -> None:
        """Call the frame's yield point after layer ``done`` (1-based) ends a layer group."""
        if (
            self._yield_point is not None
            and done % self.config.yield_every == 0
            and done < len(self.layers)
        ):
            self._yield_point()

    def _own(self, t: Tensor) -> Tensor:
        """``t`` in the storage dtype, holding no more memory than its own elements (a view into
        a fused q/k/v output is copied out, a whole-buffer view is kept as it is)."""
        t = t.to(self.storage_dtype)
        if t.untyped_storage().nbytes() > t.numel() * t.element_size():
            t = t.contiguous()
        return t

    def _paper(
        self, frame: _Frame, ref: Reference, *, index: int, change: Tensor
    ) -> CachedEncoding:
        """The released selective layer forward (see the module docstring)."""
        tokens = frame.tokens
        grouping = frame.grouping
        count = max(1, int((tokens // grouping.size) * self.config.update_token_ratio))
        kept: dict[int, Tensor] = {0: frame.x} if 0 in self.keep else {}
        recomputed = torch.zeros(tokens, dtype=torch.bool, device=frame.x.device)
        similarities: list[Tensor] = []
        per_layer: list[int] = []
        h = frame.x
        layers = zip(self.layers, ref.layers, frame.masks, strict=True)
        for j, (layer, saved, mask) in enumerate(layers, start=1):
            keys = project_keys(layer, h, frame.rotary)
            similarity = token_cosine(keys, saved.keys)
            similarities.append(similarity.mean())
            rows = grouping.tokens(lowest(grouping.pool(similarity), count))
            q, v_rows = project_queries_values(
                layer, h.index_select(1, rows), frame.rotary_rows(rows)
            )
            values = saved.values.to(self.dtype).index_copy(2, rows, v_rows)
            h = self._finish_layer(layer, h, rows, q, keys, values, saved, mask)
            recomputed[rows] = True
            per_layer.append(int(rows.shape[0]))
            if j in self.keep:
                kept[j] = h
            self._between_layers(j)
        return self._selective_result(
            index, ref, tokens, kept, per_layer, similarities, recomputed, change
        )

    def _adaptive(
        self,
        frame: _Frame,
        ref: Reference,
        previous: Tensor | None,
        *,
        index: int,
        change: Tensor,
    ) -> CachedEncoding:
        """Decide for the frame from the input change, then the thresholded layer forward."""
        options = self.config.adaptive
        tokens = frame.tokens
        grouping = frame.grouping
        groups = tokens // grouping.size
        grouped = grouping.pool(change)
        over = grouped > options.token_threshold
        changed = int(over.sum().item())
        # drift is judged on the tokens that count as unchanged: a few strongly changed tokens (a
        # person walking in) must not read as drift, many slightly changed ones (light) must
        rest = grouped[~over]
        rest_similarity = 1.0 - float(rest.mean().item()) if rest.numel() else 1.0
        reason: RefreshReason | None = None
        if ref.age + 1 > options.max_age:
            reason = "max_age"
        elif changed > options.max_ratio * groups:
            reason = "scene_change"
        elif rest_similarity < options.drift_similarity:
            reason = "drift"
        elif changed and previous is not None:
            recent = grouping.pool(input_change(self.layers[0], frame.x, previous))
            at_rest = over & (recent <= options.token_threshold)
            self._settled += float(at_rest.sum().item()) / groups
            if self._settled >= options.settle_cost:
                reason = "settled"
        if reason is not None:
            return self._full(frame, index=index, store=True, reason=reason, change=change)
        ref.age += 1
        if changed == 0:
            return self._reused(index, ref, tokens, change)
        minimum = int(options.min_ratio * groups)
        maximum = max(1, int(options.max_ratio * groups))
        kept: dict[int, Tensor] = {0: frame.x} if 0 in self.keep else {}
        recomputed = torch.zeros(tokens, dtype=torch.bool, device=frame.x.device)
        similarities: list[Tensor] = []
        per_layer: list[int] = []
        h = frame.x
        h_ref = ref.embeds
        layers = zip(self.layers, ref.layers, frame.masks, strict=True)
        for j, (layer, saved, mask) in enumerate(layers, start=1):
            layer_change = change if j == 1 else input_change(layer, h, h_ref)
            similarities.append(1.0 - layer_change.mean())
            picked = over_threshold(
                grouping.pool(layer_change), options.token_threshold, minimum, maximum
            )
            rows = grouping.tokens(picked)
            attention = saved.attention.to(self.dtype)
            mlp = saved.mlp.to(self.dtype)
            if rows.shape[0] == 0:
                h = (h + attention) + mlp
            else:
                qkv = project_qkv(layer, h.index_select(1, rows), frame.rotary_rows(rows))
                keys = saved.keys.to(self.dtype).index_copy(2, rows, qkv.k)
                values = saved.values.to(self.dtype).index_copy(2, rows, qkv.v)
                h = self._finish_layer(layer, h, rows, qkv.q, keys, values, saved, mask)
                recomputed[rows] = True
            per_layer.append(int(rows.shape[0]))
            h_ref = (h_ref + attention) + mlp
            if j in self.keep:
                kept[j] = h
            self._between_layers(j)
        return self._selective_result(
            index, ref, tokens, kept, per_layer, similarities, recomputed, change
        )

    def _finish_layer(
        self,
        layer: EncoderLayer,
        h: Tensor,
        rows: Tensor,
        q: Tensor,
        keys: Tensor,
        values: Tensor,
        saved: LayerReference,
        mask: Tensor | None,
    ) -> Tensor:
        """Attention rows of ``rows`` over all ``keys``/``values``, then out-proj and MLP of those
        rows; every other row takes its residual plus the reference's branch outputs."""
        tokens = int(h.shape[1])
        attended = attend(layer, q, keys, values, _mask_rows(mask, rows, tokens))
        after_attention = h.index_select(1, rows) + project_out(layer, attended)
        out_rows = after_attention + mlp_branch(layer, after_attention)
        static = (h + saved.attention.to(self.dtype)) + saved.mlp.to(self.dtype)
        return static.index_copy(1, rows, out_rows)

    def _reused(self, index: int, ref: Reference, tokens: int, change: Tensor) -> CachedEncoding:
        assert ref.kept is not None
        stats = self._stats(
            index=index,
            kind="reused",
            reason=None,
            tokens=tokens,
            age=ref.age,
            per_layer=(0,) * len(self.layers),
            similarity=(),
            recomputed=torch.zeros(tokens, dtype=torch.bool, device=change.device),
            change=change,
        )
        self._count(frames=1, reused_frames=1, token_layers=tokens * len(self.layers))
        hidden = tuple(t.clone() for t in ref.kept)
        return CachedEncoding(hidden_states=hidden, keep=self.keep, stats=stats)

    def _selective_result(
        self,
        index: int,
        ref: Reference,
        tokens: int,
        kept: dict[int, Tensor],
        per_layer: list[int],
        similarities: list[Tensor],
        recomputed: Tensor,
        change: Tensor,
    ) -> CachedEncoding:
        similarity = tuple(float(s) for s in torch.stack(similarities).tolist())
        stats = self._stats(
            index=index,
            kind="selective",
            reason=None,
            tokens=tokens,
            age=ref.age,
            per_layer=tuple(per_layer),
            similarity=similarity,
            recomputed=recomputed,
            change=change,
        )
        self._count(
            frames=1,
            selective_frames=1,
            token_layers=tokens * len(self.layers),
            recomputed_token_layers=sum(per_layer),
        )
        return CachedEncoding(
            hidden_states=tuple(kept[i] for i in self.keep), keep=self.keep, stats=stats
        )

    def _stats(
        self,
        *,
        index: int,
        kind: FrameKind,
        reason: RefreshReason | None,
        tokens: int,
        age: int,
        per_layer: tuple[int, ...],
        similarity: tuple[float, ...],
        recomputed: Tensor,
        change: Tensor | None,
    ) -> FrameStats:
        return FrameStats(
            stream_id=self.stream_id,
            index=index,
            kind=kind,
            refresh_reason=reason,
            tokens=tokens,
            reference_age=age,
            recomputed_per_layer=per_layer,
            similarity_per_layer=similarity,
            input_similarity=None if change is None else 1.0 - float(change.mean().item()),
            recomputed=recomputed,
            change=change,
        )


def stack_hidden(encodings: Sequence[CachedEncoding]) -> tuple[Tensor, ...]:
    """The hidden states of several frames stacked per kept index -> each ``(F, N, D)``, the
    input of ``VideoLLM.tokens_from_hidden``."""
    if not encodings:
        raise FrameError("no encoded frames to stack")
    count = len(encodings[0].hidden_states)
    return tuple(torch.cat([e.hidden_states[i] for e in encodings], dim=0) for i in range(count))
