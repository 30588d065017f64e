"""The pruner's configuration: one small frozen record per concern, validated on construction.

:class:`PrunerConfig` names the method and carries the token :class:`Budget` plus one option
record per method (only the chosen method's is read). Every record checks its own fields in
``__post_init__`` and raises :class:`~pruner.errors.ConfigurationError` with a message that says
what is allowed; :func:`config_from_mapping` builds the whole record from a plain mapping (a YAML
section) and rejects unknown keys.

Defaults are the released code's unless the docstring of the field says otherwise (see
``/work/shared/reference/methods.md`` sections 1.2-1.3, 3, 4 and 5 for the sources).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, get_args

from pruner.errors import ConfigurationError

Method = Literal["stc", "dycoke", "holitom", "metok", "none"]
METHODS: Final[tuple[str, ...]] = get_args(Method)

STCStrategy = Literal["gaussian", "dual_anchor"]
STC_STRATEGIES: Final[tuple[str, ...]] = get_args(STCStrategy)

ShapeChangePolicy = Literal["reset", "raise"]
SHAPE_CHANGE_POLICIES: Final[tuple[str, ...]] = get_args(ShapeChangePolicy)


def _check_int(owner: str, name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{owner}.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{owner}.{name} must be at least {minimum}, got {value}")


def _check_float(
    owner: str,
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{owner}.{name} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ConfigurationError(
            f"{owner}.{name} must be in {left}{low}, {high}{right}, got {value}"
        )


def _check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigurationError(
            f"{owner}.{name} must be one of {', '.join(choices)}; got {value!r}"
        )


def _check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{owner}.{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class Budget:
    """How many tokens a frame may keep, on average, and whether that adapts to novelty.

    Give exactly one of ``tokens`` (tokens per frame) or ``ratio`` (share of the frame's token
    count N; ``floor(ratio * N)``, at least 1). A budget larger than N keeps everything.

    What "within budget" means per method (B = the per-frame budget):

    - ``stc``: every frame keeps exactly ``min(B, N)`` tokens.
    - ``dycoke``: every 4-frame window keeps at most ``4 * B`` (frame 0 whole, frames 1-3 the rest).
    - ``holitom``: every emitted group of n frames keeps at most ``n * B``.
    - ``metok``: any n consecutive frames keep at most ``(n + credit_frames) * B``; the long-run
      average is at most B.

    With ``adaptive=True`` (methods ``stc``, ``dycoke`` and ``metok``) a frame may keep fewer
    tokens than its method's share: at most the number of positions that changed since the
    previous frame (cosine at the same position at most ``novelty_tau``) and at least
    ``min_tokens``. A frame identical to the previous one then costs ``min_tokens``.
    ``holitom`` adapts by construction (static tokens merge away) and rejects ``adaptive``.
    """

    tokens: int | None = None
    ratio: float | None = None
    adaptive: bool = False
    min_tokens: int = 1
    novelty_tau: float = 0.9

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.ratio is None):
            raise ConfigurationError(
                "budget needs exactly one of tokens (per frame) or ratio (share of the frame's "
                f"tokens); got tokens={self.tokens!r}, ratio={self.ratio!r}"
            )
        if self.tokens is not None:
            _check_int("budget", "tokens", self.tokens, 1)
        if self.ratio is not None:
            _check_float("budget", "ratio", self.ratio, 0.0, 1.0, low_open=True)
        _check_bool("budget", "adaptive", self.adaptive)
        _check_int("budget", "min_tokens", self.min_tokens, 0)
        _check_float("budget", "novelty_tau", self.novelty_tau, -1.0, 1.0, high_open=True)
        if self.tokens is not None and self.min_tokens > self.tokens:
            raise ConfigurationError(
                f"budget.min_tokens ({self.min_tokens}) must not exceed budget.tokens "
                f"({self.tokens})"
            )

    def per_frame(self, num_tokens: int) -> int:
        """The per-frame budget B for a frame of ``num_tokens`` tokens (1 <= B <= N)."""
        if self.tokens is not None:
            wanted = self.tokens
        else:
            assert self.ratio is not None
            # The epsilon keeps e.g. 0.29 * 100 = 28.999... from flooring to 28.
            wanted = math.floor(self.ratio * num_tokens + 1e-9)
        return max(1, min(wanted, num_tokens))


@dataclass(frozen=True)
class STCOptions:
    """STC-Pruner (released ``gaussian`` default, or the paper's ``dual_anchor`` form).

    ``gaussian``: score = sum over ``bandwidths`` of Gaussian kernels of each token's distance to
    the frame's mean token and to the running mean of past frame means, on the
    ``channel_keep_ratio`` lowest-variance channels; the least similar tokens are kept.
    ``gaussian_history`` = None averages all past frames (released; O(D) state), an integer the
    last that many. ``dual_anchor``: ``alpha * (1 - cos(z, temporal)) + (1 - alpha) * (1 -
    cos(z, spatial))``, the temporal anchor being the mean of the last ``dual_anchor_window``
    frame means. ``channel_aligned_memory=False`` reproduces the released code, which stores each
    frame's mean over its own low-variance channels in variance-rank order (so the history mixes
    channels when the selection changes); True stores full-width means and reads them at the
    current frame's channels.
    """

    strategy: STCStrategy = "gaussian"
    channel_keep_ratio: float = 0.5
    bandwidths: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
    gaussian_history: int | None = None
    alpha: float = 0.5
    dual_anchor_window: int = 16
    channel_aligned_memory: bool = False

    def __post_init__(self) -> None:
        _check_choice("stc", "strategy", self.strategy, STC_STRATEGIES)
        _check_float("stc", "channel_keep_ratio", self.channel_keep_ratio, 0.0, 1.0, low_open=True)
        if not isinstance(self.bandwidths, tuple) or not self.bandwidths:
            raise ConfigurationError(
                f"stc.bandwidths must be a non-empty tuple of positive numbers, "
                f"got {self.bandwidths!r}"
            )
        for value in self.bandwidths:
            _check_float("stc", "bandwidths[]", value, 0.0, math.inf, low_open=True, high_open=True)
        if self.gaussian_history is not None:
            _check_int("stc", "gaussian_history", self.gaussian_history, 1)
        _check_float("stc", "alpha", self.alpha, 0.0, 1.0)
        _check_int("stc", "dual_anchor_window", self.dual_anchor_window, 1)
        _check_bool("stc", "channel_aligned_memory", self.channel_aligned_memory)


@dataclass(frozen=True)
class DyCokeOptions:
    """DyCoke temporal token merging (TTM) in 4-frame windows.

    ``k`` is the share of tokens dropped from frames 1-3 of each window (the paper's K: 0.3, 0.5
    or 0.7; frames keep ``int((1 - k) * N)``). None derives it from the budget so that a window
    keeps at most ``4 * B`` tokens: ``floor((4B - N) / 3)`` per pruned frame, which needs
    ``B >= N / 4`` because frame 0 is kept whole. When ``k`` is set the budget's size is unused
    (its ``adaptive`` settings still apply).
    """

    k: float | None = None

    def __post_init__(self) -> None:
        if self.k is not None:
            _check_float("dycoke", "k", self.k, 0.0, 1.0)


@dataclass(frozen=True)
class HoliTomOptions:
    """HoliTom outer-LLM merging over a sliding window of at most ``window`` buffered frames.

    A position is static between two consecutive frames when their cosine similarity is above
    ``tau``; the released dynamic programme picks the segments that remove the most static
    copies; static tokens of a segment are averaged into its first frame and clustered by DPC-kNN
    (``knn`` neighbours, centre weight ``beta``); dynamic tokens are kept by saliency (the released
    default D = 0: dominant tokens only). Frames are emitted when their segment is closed, at the
    latest after ``window - 1`` further frames.
    """

    tau: float = 0.8
    window: int = 8
    beta: float = 0.6
    knn: int = 7

    def __post_init__(self) -> None:
        _check_float("holitom", "tau", self.tau, -1.0, 1.0, high_open=True)
        _check_int("holitom", "window", self.window, 1)
        _check_float("holitom", "beta", self.beta, 0.0, 1.0)
        _check_int("holitom", "knn", self.knn, 1)


@dataclass(frozen=True)
class METokOptions:
    """METok stage 1 (event-aware pooling), adapted to a stream.

    ``strides`` are the pooling strides on the incoming grid for, in order, key frames of novel
    events, the mixed cases, and other frames of known events (the released (2, 4, 8) on the
    27x27 tower grid are (1, 2, 4) on LLaVA-OV's 2x-pooled 14x14 grid). An event boundary falls
    where the adjacent-frame similarity is below the ``cuts / (window - 1)`` quantile of the last
    ``window - 1`` similarities (the released code cuts at the 4 lowest of a 32-frame clip), once
    ``min_history`` similarities are known and the drop is at least ``min_drop`` times the
    typical one; a new event is novel when it is at least ``novel_share`` as far from every
    remembered event (``event_memory`` of them) as from the previous frame; the first
    ``key_frames`` frames of an event are its key frames (released: 6 per event).
    ``credit_frames`` budgets of unused tokens may be saved for a burst.
    """

    strides: tuple[int, int, int] = (1, 2, 4)
    cuts: int = 4
    window: int = 32
    min_history: int = 3
    min_drop: float = 4.0
    novel_share: float = 0.5
    key_frames: int = 6
    event_memory: int = 8
    credit_frames: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.strides, tuple) or len(self.strides) != 3:
            raise ConfigurationError(
                f"metok.strides must be three increasing positive integers, got {self.strides!r}"
            )
        for value in self.strides:
            _check_int("metok", "strides[]", value, 1)
        if not self.strides[0] < self.strides[1] < self.strides[2]:
            raise ConfigurationError(
                f"metok.strides must be strictly increasing, got {self.strides!r}"
            )
        _check_int("metok", "cuts", self.cuts, 1)
        _check_int("metok", "window", self.window, 2)
        if self.cuts >= self.window - 1:
            raise ConfigurationError(
                f"metok.cuts ({self.cuts}) must be smaller than metok.window - 1 "
                f"({self.window - 1})"
            )
        _check_int("metok", "min_history", self.min_history, 1)
        if self.min_history > self.window - 1:
            raise ConfigurationError(
                f"metok.min_history ({self.min_history}) must not exceed metok.window - 1 "
                f"({self.window - 1})"
            )
        _check_float("metok", "min_drop", self.min_drop, 0.0, math.inf, high_open=True)
        _check_float("metok", "novel_share", self.novel_share, 0.0, 1.0, low_open=True)
        _check_int("metok", "key_frames", self.key_frames, 1)
        _check_int("metok", "event_memory", self.event_memory, 1)
        _check_int("metok", "credit_frames", self.credit_frames, 0)


@dataclass(frozen=True)
class PrunerConfig:
    """Everything one stream's pruner needs; build it once, pass it to ``make_pruner``.

    ``method`` picks the algorithm (``none`` keeps every token and ignores the budget).
    ``on_shape_change`` decides what a frame with another grid, channel count, dtype or device
    does: ``reset`` emits the buffered frames, resets the state and carries on (logged once per
    change); ``raise`` raises :class:`~pruner.errors.ShapeChangedError`.
    """

    method: Method = "stc"
    budget: Budget = field(default_factory=lambda: Budget(ratio=0.33))
    stc: STCOptions = field(default_factory=STCOptions)
    dycoke: DyCokeOptions = field(default_factory=DyCokeOptions)
    holitom: HoliTomOptions = field(default_factory=HoliTomOptions)
    metok: METokOptions = field(default_factory=METokOptions)
    on_shape_change: ShapeChangePolicy = "reset"

    def __post_init__(self) -> None:
        _check_choice("pruner", "method", self.method, METHODS)
        _check_choice("pruner", "on_shape_change", self.on_shape_change, SHAPE_CHANGE_POLICIES)
        for name, kind in (
            ("budget", Budget),
            ("stc", STCOptions),
            ("dycoke", DyCokeOptions),
            ("holitom", HoliTomOptions),
            ("metok", METokOptions),
        ):
            if not isinstance(getattr(self, name), kind):
                raise ConfigurationError(
                    f"pruner.{name} must be a {kind.__name__}, got {getattr(self, name)!r}"
                )
        if (
            self.method == "dycoke"
            and self.dycoke.k is None
            and self.budget.ratio is not None
            and self.budget.ratio < 0.25
        ):
            raise ConfigurationError(
                "dycoke keeps frame 0 of every 4-frame window whole, so budget.ratio must be at "
                f"least 0.25 (got {self.budget.ratio}); raise the budget, set dycoke.k, or pick "
                "another method"
            )
        if self.method == "holitom" and self.budget.adaptive:
            raise ConfigurationError(
                "holitom adapts to novelty by construction (static tokens merge away); set "
                "budget.adaptive to false"
            )


_SECTIONS: Final[dict[str, type[Any]]] = {
    "budget": Budget,
    "stc": STCOptions,
    "dycoke": DyCokeOptions,
    "holitom": HoliTomOptions,
    "metok": METokOptions,
}
_TUPLE_FIELDS: Final[frozenset[str]] = frozenset({"bandwidths", "strides"})


def _build_section(name: str, kind: type[Any], raw: object) -> Any:
    if isinstance(raw, kind):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"pruner.{name} must be a mapping, got {raw!r}")
    allowed = {f.name for f in fields(kind)}
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) {', '.join(unknown)} in pruner.{name}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    values = {
        str(key): tuple(value) if key in _TUPLE_FIELDS and isinstance(value, list) else value
        for key, value in raw.items()
    }
    return kind(**values)


def config_from_mapping(raw: Mapping[str, object]) -> PrunerConfig:
    """Build a validated :class:`PrunerConfig` from a plain mapping (e.g. a YAML section).

    Keys are the field names (``method``, ``budget``, ``stc``, ``dycoke``, ``holitom``, ``metok``,
    ``on_shape_change``); nested sections are mappings; lists become tuples. Unknown keys raise
    :class:`~pruner.errors.ConfigurationError`.
    """
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"the pruner section must be a mapping, got {raw!r}")
    allowed = {f.name for f in fields(PrunerConfig)}
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) {', '.join(unknown)} in pruner; allowed: {', '.join(sorted(allowed))}"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        kind = _SECTIONS.get(str(key))
        values[str(key)] = value if kind is None else _build_section(str(key), kind, value)
    return PrunerConfig(**values)
