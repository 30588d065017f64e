"""STC-Cacher: reuse a reference frame's vision-encoder work for the tokens that did not change.

One :class:`StreamCacher` per stream (or a :class:`CacherRegistry` keyed by stream id) encodes
each frame's patch embeddings with the encoder's layer records (:mod:`cacher.layers`) and returns
the hidden states the model's head needs plus :class:`FrameStats`. Modes: ``paper`` (the released
STC-Cacher), ``adaptive`` (change-driven share and reference refresh), ``off``. The change gate
(:mod:`cacher.gate`, numpy only) runs before all of it and skips frames that show nothing new.
See :mod:`cacher.stream` for the algorithm and :mod:`cacher.config` for the knobs.
"""

from cacher.config import (
    CACHE_DTYPES,
    MODES,
    AdaptiveOptions,
    CacherConfig,
    Mode,
    config_from_mapping,
)
from cacher.errors import CacherError, ConfigurationError, EncoderError, FrameError
from cacher.gate import (
    GATE_REASONS,
    ChangeGate,
    GateConfig,
    GateCounters,
    GateDecision,
    GateReason,
    gate_config_from_mapping,
)
from cacher.records import (
    REFRESH_REASONS,
    CachedEncoding,
    CacherCounters,
    FrameKind,
    FrameStats,
    RefreshReason,
)
from cacher.registry import CacherRegistry
from cacher.state import reference_bytes
from cacher.stream import StreamCacher, stack_hidden

__all__ = [
    "CACHE_DTYPES",
    "GATE_REASONS",
    "MODES",
    "REFRESH_REASONS",
    "AdaptiveOptions",
    "CachedEncoding",
    "CacherConfig",
    "CacherCounters",
    "CacherError",
    "CacherRegistry",
    "ChangeGate",
    "ConfigurationError",
    "EncoderError",
    "FrameError",
    "FrameKind",
    "FrameStats",
    "GateConfig",
    "GateCounters",
    "GateDecision",
    "GateReason",
    "Mode",
    "RefreshReason",
    "StreamCacher",
    "config_from_mapping",
    "gate_config_from_mapping",
    "reference_bytes",
    "stack_hidden",
]
