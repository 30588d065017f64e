"""Build a stream's pruner from its config record, by method name."""

from __future__ import annotations

from typing import Final

from pruner.base import StreamPruner
from pruner.config import PrunerConfig
from pruner.dycoke import DyCokePruner
from pruner.errors import ConfigurationError
from pruner.holitom import HoliTomPruner
from pruner.metok import METokPruner
from pruner.passthrough import PassthroughPruner
from pruner.stc import STCPruner

PRUNERS: Final[dict[str, type[StreamPruner]]] = {
    "none": PassthroughPruner,
    "stc": STCPruner,
    "dycoke": DyCokePruner,
    "holitom": HoliTomPruner,
    "metok": METokPruner,
}


def make_pruner(config: PrunerConfig) -> StreamPruner:
    """A new pruner for one stream (state is per instance: build one per stream)."""
    if not isinstance(config, PrunerConfig):
        raise ConfigurationError(f"make_pruner needs a PrunerConfig, got {type(config).__name__}")
    try:
        kind = PRUNERS[config.method]
    except KeyError:
        raise ConfigurationError(
            f"unknown pruning method {config.method!r}; choose one of {', '.join(PRUNERS)}"
        ) from None
    return kind(config)
