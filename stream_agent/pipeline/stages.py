"""The one place that calls the stage packages (cacher, pruner, memory) for the daemon.

Everything the pipeline needs of them goes through the small functions and classes here: the
daemon config's sections mapped onto each stage's own settings, one camera's vision chain
(preprocess -> patch embedding -> STC-Cacher -> the family's head -> pruner -> memory chunks), and
the memory's answers (already the shared records of :mod:`stream_agent.answers`). Their APIs
are young; when one changes, this module is what changes with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

import cacher
import pruner
from cacher import GateConfig
from stream_agent.answers import AnswerEvent
from stream_agent.config import CacherConfig, GateSection, PrunerConfig
from stream_agent.engine.records import FrameLike
from stream_agent.errors import ConfigError
from stream_agent.memory import (
    FrameStamp,
    Memory,
    MemoryOptions,
    StoreError,
    StreamStatus,
    TimeRange,
)
from stream_agent.memory.frames import BlockFrame, FrameStore, thumbnail_jpeg
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import DecodeOptions, VisualTokens

log = logging.getLogger(__name__)

# Families whose vision merger concatenates 2x2 windows of raster-ordered patches: the cacher
# must reuse or recompute such a window whole.
_WINDOW_MERGE_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl"})


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def cacher_settings(section: CacherConfig, model: VideoLLM) -> cacher.CacherConfig:
    """The daemon's ``cacher`` section as the cacher's config, fitted to the model's family.

    ``stc`` is the released STC-Cacher (``paper`` mode: every ``cache_interval``-th frame in
    full, the ``update_token_ratio`` share of tokens recomputed on the others); ``adaptive`` the
    cacher's change-driven mode with its default options; ``none`` encodes every frame in full
    through the same layer code.
    """
    grouped = model.family in _WINDOW_MERGE_FAMILIES
    modes: dict[str, cacher.Mode] = {"stc": "paper", "adaptive": "adaptive", "none": "off"}
    return cacher.CacherConfig(
        mode=modes[section.method],
        cache_dtype="float16" if section.cache_half_precision else "same",
        cache_interval=section.cache_interval,
        update_token_ratio=section.update_token_ratio,
        group_size=4 if grouped else 1,
        group_layout="window" if grouped else "consecutive",
        yield_every=section.yield_every,
    )


def gate_settings(section: GateSection) -> cacher.GateConfig:
    """The daemon's ``cacher.gate`` section as the change gate's config."""
    return cacher.gate_config_from_mapping(section.model_dump())


def pruner_settings(section: PrunerConfig) -> pruner.PrunerConfig:
    """The daemon's ``pruner`` section as the pruner's config (a per-frame token budget)."""
    if section.keep_ratio is not None:
        budget = pruner.Budget(ratio=section.keep_ratio)
    elif section.tokens_per_frame is not None:
        budget = pruner.Budget(tokens=section.tokens_per_frame)
    else:
        budget = pruner.Budget(ratio=1.0)
    return pruner.PrunerConfig(method=section.method, budget=budget)


@dataclass(frozen=True, slots=True)
class ChainSettings:
    """What every camera's vision chain is built with."""

    cacher: cacher.CacherConfig
    pruner: pruner.PrunerConfig
    gate: GateConfig = field(default_factory=lambda: GateConfig(enabled=False))


def chain_settings(
    cacher_section: CacherConfig, pruner_section: PrunerConfig, model: VideoLLM
) -> ChainSettings:
    """Both stages' settings; a combination they reject is a :class:`ConfigError`."""
    try:
        return ChainSettings(
            cacher_settings(cacher_section, model),
            pruner_settings(pruner_section),
            gate_settings(cacher_section.gate),
        )
    except (cacher.CacherError, pruner.PrunerError) as exc:
        raise ConfigError(f"the cacher/pruner settings do not work together: {exc}") from exc


def open_memory(
    model: VideoLLM, options: MemoryOptions, frames: FrameStore | None = None
) -> Memory:
    """The memory of every camera over ``model``; loads what ``options.store_dir`` holds.
    ``frames`` keeps each block's evidence frame (deleted with the block)."""
    try:
        options.store_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the memory folder {options.store_dir}: {exc.strerror}; choose "
            "another memory.store_dir (--store-dir)"
        ) from exc
    return Memory(model, options, frames=frames)


# ---------------------------------------------------------------------------------------------
# One camera's vision chain
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Block:
    """What one step of a camera adds to its memory: its visual tokens, the rows the pruner
    kept (and their merged values, if it merged), where it comes from and the time it covers."""

    tokens: VisualTokens
    stamp: FrameStamp
    keep: torch.Tensor
    embeds: torch.Tensor | None
    seconds_per_step: float
    frame: BlockFrame | None = None
    """The step's representative (middle) frame as a small JPEG: the block's evidence."""


@dataclass(frozen=True, slots=True)
class Extension:
    """Nothing new up to ``end`` (the change gate held the frames back, or the cacher reused the
    last block's frame whole): the memory extends the camera's newest block's time span."""

    end: FrameStamp


Step = Block | Extension
YieldPoint = Callable[[], None]


@dataclass(frozen=True, slots=True)
class GateStats:
    """One camera's gate decisions so far: frames passed and gated, decisions by reason."""

    passed: int = 0
    gated: int = 0
    by_reason: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class _Held:
    """A step the pruner has not decided on yet (a windowed method holds a few back)."""

    tokens: VisualTokens
    stamp: FrameStamp
    seconds_per_step: float
    frame: BlockFrame | None = None


@dataclass(frozen=True, slots=True)
class ChainStats:
    """One camera's compression so far (None before any frame)."""

    cacher_reuse_share: float | None
    pruner_kept_share: float | None
    resets: int
    gate: GateStats = GateStats()
    reused_extensions: int = 0


FrameNote = Callable[[str, float, float | None], None]
"""(camera, frame wall time, the cacher's changed-token share of its step or None): called on
the engine thread for every encoded frame (the alerts' motion gate listens)."""


class VisionChain:
    """One camera's frames -> memory blocks: preprocess, patch embedding, STC-Cacher, the
    family's head, the pruner. Frames are grouped into the model's steps (two frames per step
    for Qwen2-VL; a lone frame waits for its partner). Before all of it the change gate
    (``settings.gate``) compares each frame with the camera's last encoded one: a step none of
    whose frames changed is an :class:`Extension` of the newest block (no encode, no prefill).
    Not thread-safe (the engine thread)."""

    def __init__(
        self,
        camera: str,
        model: VideoLLM,
        settings: ChainSettings,
        on_frame: FrameNote | None = None,
    ) -> None:
        self.camera = camera
        self._on_frame = on_frame
        self._model = model
        spec = model.vision_spec
        self._frames_per_step = max(1, spec.frames_per_step)
        self._patch_size = spec.patch_size
        self._window_groups = settings.cacher.group_layout == "window"
        self._cacher = cacher.StreamCacher(
            model.vision_layers, settings.cacher, keep=spec.feature_layers, stream_id=camera
        )
        self._pruner = pruner.make_pruner(settings.pruner)
        self._gate = cacher.ChangeGate(settings.gate)
        self._gate_refused = False  # a frame the gate cannot compare (logged once) passes
        self._last_from_reference = False  # the newest step's tokens are the reference's
        self._reused_extensions = 0
        self._waiting: list[FrameLike] = []
        self._held: dict[int, _Held] = {}
        self._resets = 0
        self._last_step_pts: float | None = None

    # --- frames in, blocks out -------------------------------------------------------------

    @torch.no_grad()
    def add(
        self, frames: Sequence[FrameLike], *, yield_point: YieldPoint | None = None
    ) -> list[Step]:
        """Encode ``frames`` (oldest first); return the blocks (and extensions of the newest
        block) ready for the memory, in order. ``yield_point`` is called between vision layer
        groups of each encode (the engine answers waiting questions there)."""
        out: list[Step] = []
        for frame in frames:
            self._waiting.append(frame)
            if len(self._waiting) == self._frames_per_step:
                step, self._waiting = self._waiting, []
                # every frame of the step is shown to the gate (its counters and reference)
                shares = [self._passes(f) for f in step]
                if any(s is not None for s in shares):
                    changed = [s for s in shares if s is not None and s >= 0.0]
                    motion = max(changed) if changed else None
                    out.extend(self._step(step, yield_point, motion))
                else:
                    out.extend(self._extend(step[-1]))
        return out

    def _passes(self, frame: FrameLike) -> float | None:
        """None when the gate holds ``frame`` back; else the share of the picture that changed
        (-1.0 when the gate does not compare: off, or a frame it cannot read)."""
        try:
            decision = self._gate.check(self.camera, frame.image, frame.pts)
        except cacher.FrameError as exc:
            if not self._gate_refused:
                self._gate_refused = True
                log.info(
                    "camera %s: the change gate passes frames it cannot compare: %s",
                    self.camera,
                    exc,
                )
            return -1.0
        if not decision.passed:
            return None
        return -1.0 if decision.reason == "disabled" else decision.changed_share

    def _extend(self, frame: FrameLike) -> list[Step]:
        """Nothing new up to ``frame``: extend the newest step (held by the pruner, or the
        memory's newest block)."""
        end = FrameStamp(seq=frame.seq, pts=frame.pts, wall=frame.wall_time)
        if self._held:
            newest = max(self._held)
            held = self._held[newest]
            stamp = replace(held.stamp, pts_end=end.pts, wall_end=end.wall)
            self._held[newest] = _Held(held.tokens, stamp, held.seconds_per_step)
            return []
        return [Extension(end)]

    def _step(
        self, frames: list[FrameLike], yield_point: YieldPoint | None, motion: float | None
    ) -> list[Step]:
        """Encode one step. ``motion`` is the share of the picture the change gate saw change
        (None: the gate did not compare), what ``on_frame`` reports; without it, the cacher's
        recomputed share stands in."""
        model = self._model
        pixels = model.preprocess([f.image for f in frames])
        embeds = model.embed_patches(pixels)[:1]  # one step: (1, N, D)
        rotary, _ = model.vision_attention(pixels)
        grid = None
        if self._window_groups:
            grid = (pixels.shape[-2] // self._patch_size, pixels.shape[-1] // self._patch_size)
        encoded = self._cacher.encode(
            embeds,
            rotary=rotary,
            mask=model.vision_layer_masks(pixels),
            grid=grid,
            yield_point=yield_point,
        )
        kind = encoded.stats.kind
        if kind == "reused" and self._last_from_reference:
            # the cacher reused its reference whole, and the newest step already holds the
            # reference's tokens: the same tokens again would be the same block stored twice
            self._reused_extensions += 1
            return self._extend(frames[-1])
        self._last_from_reference = kind in ("reference", "reused")
        tokens = model.tokens_from_hidden(cacher.stack_hidden([encoded]))[0]
        first, last = frames[0], frames[-1]
        if self._on_frame is not None:
            share = encoded.stats.recomputed_share if motion is None else motion
            for frame in frames:
                try:
                    self._on_frame(self.camera, frame.wall_time, share)
                except Exception:  # a listener must never stop the encoding
                    log.exception("the frame listener of camera %s failed", self.camera)
        stamp = FrameStamp(
            seq=first.seq,
            pts=first.pts,
            wall=first.wall_time,
            pts_end=last.pts,
            wall_end=last.wall_time,
        )
        # the time one step covers, from the sampling itself (the model's temporal positions
        # of families that place steps in time, Qwen2.5-VL, depend on it)
        previous, self._last_step_pts = self._last_step_pts, first.pts
        covered = first.pts - previous if previous is not None else 0.0
        seconds = covered if covered > 0 else float(self._frames_per_step)
        # keyed by the pruner's own numbering, so that a push that fails (and may or may not
        # have used up a number) cannot put the two out of step
        index = self._pruner.next_frame_index
        middle = frames[len(frames) // 2]
        picture = BlockFrame(thumbnail_jpeg(middle.image), middle.pts, middle.wall_time)
        self._held[index] = _Held(tokens, stamp, seconds, picture)
        try:
            selections = self._pruner.push(tokens.embeds, tokens.grid, first.pts)
        except BaseException:
            del self._held[index]
            raise
        return self._blocks(selections)

    def _blocks(self, selections: Sequence[pruner.Selection]) -> list[Step]:
        blocks: list[Step] = []
        for selection in selections:
            held = self._held.pop(selection.frame_index)
            merged = selection.tokens if selection.merged is not None else None
            blocks.append(
                Block(
                    held.tokens,
                    held.stamp,
                    selection.indices,
                    merged,
                    held.seconds_per_step,
                    held.frame,
                )
            )
        return blocks

    def drain(self) -> list[Step]:
        """The blocks of frames the pruner still holds back (its stream state is kept)."""
        return self._blocks(self._pruner.flush())

    def reset(self) -> list[Step]:
        """The source reconnected: drain, then forget the cacher's reference, the gate's, the
        pruner's history and a frame waiting for its step partner. Returns the drained blocks."""
        blocks = self.drain()
        self._cacher.reset()
        self._gate.reset(self.camera)
        self._last_from_reference = False
        self._pruner.reset()
        self._held.clear()
        self._waiting.clear()
        self._last_step_pts = None
        self._resets += 1
        return blocks

    # --- statistics ------------------------------------------------------------------------

    def stats(self) -> ChainStats:
        counters = self._cacher.counters
        reuse = 1.0 - counters.recomputed_share if counters.token_layers else None
        pruned = self._pruner.stats()
        kept = pruned.tokens_out / pruned.tokens_in if pruned.tokens_in else None
        gated = self._gate.counters
        gate = GateStats(
            passed=gated.passed, gated=gated.gated, by_reason=tuple(sorted(gated.by_reason.items()))
        )
        return ChainStats(
            cacher_reuse_share=reuse,
            pruner_kept_share=kept,
            resets=self._resets,
            gate=gate,
            reused_extensions=self._reused_extensions,
        )


def append_blocks(memory: Memory, camera: str, blocks: Sequence[Step]) -> None:
    """Encode ``blocks`` into ``camera``'s stream of the memory, in order; an
    :class:`Extension` extends the stream's newest block instead (no prefill)."""
    for block in blocks:
        if isinstance(block, Extension):
            memory.extend_last(camera, block.end)
            continue
        memory.append_step(
            camera,
            block.tokens,
            block.stamp,
            keep=block.keep,
            embeds=block.embeds,
            seconds_per_step=block.seconds_per_step,
            frame=block.frame,
        )


# ---------------------------------------------------------------------------------------------
# Answers and status
# ---------------------------------------------------------------------------------------------


def memory_streams(memory: Memory) -> tuple[str, ...]:
    return memory.streams


def memory_status(memory: Memory) -> tuple[StreamStatus, ...]:
    return memory.status()


def answer_events(
    memory: Memory,
    text: str,
    *,
    camera: str | None,
    since: float | None,
    until: float | None,
    options: DecodeOptions,
    cancel: threading.Event,
) -> Iterator[AnswerEvent]:
    """The memory's answer to ``text`` over ``camera`` (None: all) within ``since``/``until``
    (Unix seconds, None: open): ``AnswerDelta``s, then one ``AnswerFinal`` with the evidence
    best first (``cancelled`` when ``cancel`` stopped it)."""
    time_range = None if since is None and until is None else TimeRange(since, until)
    return memory.answer(
        text,
        stream=camera,
        time_range=time_range,
        options=options,
        cancel=cancel,
    )
