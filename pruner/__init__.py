"""Visual-token pruning before the LLM: STC-Pruner, DyCoke, HoliTom, METok, or none.

One pruner per stream (``make_pruner(PrunerConfig(...))``): ``push(tokens, grid, timestamp)``
returns the frames' :class:`Selection` records that are ready, ``flush()`` the rest, ``reset()``
forgets the stream. See ``pruner/README.md`` for the methods, budgets and latencies.
"""

from pruner.base import StreamPruner
from pruner.config import (
    METHODS,
    Budget,
    DyCokeOptions,
    HoliTomOptions,
    METokOptions,
    PrunerConfig,
    STCOptions,
    config_from_mapping,
)
from pruner.errors import (
    BudgetError,
    ConfigurationError,
    FrameError,
    PrunerError,
    ShapeChangedError,
)
from pruner.factory import PRUNERS, make_pruner
from pruner.records import MergeGroups, PrunerStats, Selection

__all__ = [
    "METHODS",
    "PRUNERS",
    "Budget",
    "BudgetError",
    "ConfigurationError",
    "DyCokeOptions",
    "FrameError",
    "HoliTomOptions",
    "METokOptions",
    "MergeGroups",
    "PrunerConfig",
    "PrunerError",
    "PrunerStats",
    "STCOptions",
    "Selection",
    "ShapeChangedError",
    "StreamPruner",
    "config_from_mapping",
    "make_pruner",
]
