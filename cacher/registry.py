"""Several streams over one encoder: one :class:`StreamCacher` per stream id, bounded.

The registry holds at most ``max_streams`` cachers. Asking for one more evicts the least recently
used stream's cacher (its reference is dropped; the stream's next frame is encoded in full as a
new reference, so eviction costs time, never correctness) and counts it in :attr:`evictions`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch

from cacher.config import CacherConfig
from cacher.errors import ConfigurationError
from cacher.layers import EncoderLayer, Rotary
from cacher.records import CachedEncoding
from cacher.stream import StreamCacher, YieldPoint, resolve_keep

log = logging.getLogger(__name__)


class CacherRegistry:
    """Per-stream cachers sharing one encoder and one configuration (not thread-safe)."""

    def __init__(
        self,
        layers: Sequence[EncoderLayer],
        config: CacherConfig,
        *,
        keep: Sequence[int] = (-1,),
        max_streams: int = 16,
    ) -> None:
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise ConfigurationError(f"max_streams must be a positive integer, got {max_streams!r}")
        resolve_keep(keep, len(layers))  # fail here, not at the first stream
        self._layers = tuple(layers)
        self._config = config
        self._keep = tuple(keep)
        self.max_streams = max_streams
        self._streams: OrderedDict[str, StreamCacher] = OrderedDict()
        self.evictions = 0

    @property
    def config(self) -> CacherConfig:
        return self._config

    @property
    def streams(self) -> tuple[str, ...]:
        """Stream ids with a cacher, least recently used first."""
        return tuple(self._streams)

    def get(self, stream_id: str) -> StreamCacher:
        """The cacher of ``stream_id``, created on first use (may evict the least recent)."""
        cacher = self._streams.get(stream_id)
        if cacher is not None:
            self._streams.move_to_end(stream_id)
            return cacher
        if len(self._streams) >= self.max_streams:
            evicted, _ = self._streams.popitem(last=False)
            self.evictions += 1
            log.info(
                "cacher: %d streams at most; dropped the cache of least recent stream %r for %r",
                self.max_streams,
                evicted,
                stream_id,
            )
        cacher = StreamCacher(self._layers, self._config, keep=self._keep, stream_id=stream_id)
        self._streams[stream_id] = cacher
        return cacher

    def encode(
        self,
        stream_id: str,
        embeds: torch.Tensor,
        *,
        rotary: Rotary | None = None,
        mask: torch.Tensor | None = None,
        yield_point: YieldPoint | None = None,
    ) -> CachedEncoding:
        """Encode one frame of ``stream_id`` (see :meth:`StreamCacher.encode`)."""
        return self.get(stream_id).encode(embeds, rotary=rotary, mask=mask, yield_point=yield_point)

    def reset(self, stream_id: str) -> None:
        """Drop ``stream_id``'s reference (a reconnect); unknown ids are ignored."""
        cacher = self._streams.get(stream_id)
        if cacher is not None:
            cacher.reset()

    def remove(self, stream_id: str) -> None:
        """Forget ``stream_id`` entirely (the source was removed); unknown ids are ignored."""
        self._streams.pop(stream_id, None)

    def state_bytes(self) -> dict[str, int]:
        """Bytes of cached state per stream."""
        return {sid: cacher.state_bytes for sid, cacher in self._streams.items()}

    @property
    def total_bytes(self) -> int:
        """Bytes of cached state of all streams together."""
        return sum(cacher.state_bytes for cacher in self._streams.values())
