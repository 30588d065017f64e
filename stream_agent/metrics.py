"""A small metrics registry rendered in the Prometheus text exposition format (0.0.4).

There is no global registry: the daemon builds one :class:`Registry`, hands it (or the
:class:`DaemonMetrics` built on it) to each part explicitly, and the HTTP server renders it on
``/metrics``. Counters, gauges and histograms carry fixed label names (usually ``camera``) and are
safe to update from any thread. Values that are cheaper to read at scrape time than to push
(queue depths, memory sizes) come from collectors: callables run just before each render.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Final

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

DEFAULT_SECONDS_BUCKETS: Final = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
RATE_BUCKETS: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)

LabelValues = tuple[str, ...]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, ``NaN``, integers without ``.0``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for {name}")
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(
                f"{self.name} takes labels {list(self.label_names)}, got {sorted(labels)}"
            )
        return tuple(str(labels[n]) for n in self.label_names)

    def _samples(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        lines.extend(self._samples())
        return "\n".join(lines) + "\n"


class Counter(_Metric):
    """A value that only goes up (``*_total``)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (got {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def mirror(self, value: float, **labels: str) -> None:
        """Copy a counter kept elsewhere (e.g. by an ingest source) into this one."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_labels_text(self.label_names, key)} {format_value(value)}"


class Gauge(_Metric):
    """A value that goes up and down; ``clear()`` forgets label sets that no longer exist."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def value(self, **labels: str) -> float | None:
        with self._lock:
            return self._values.get(self._key(labels))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def _samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_labels_text(self.label_names, key)} {format_value(value)}"


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with ``_sum`` and ``_count``."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_SECONDS_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct finite numbers")
        self.bounds = (*bounds, math.inf)
        self._data: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * len(self.bounds), [0.0]))
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    counts[i] += 1
                    break
            total[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            data = self._data.get(self._key(labels))
            return sum(data[0]) if data else 0

    def _samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._data.items())
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip(self.bounds, counts, strict=True):
                running += n
                le = f'le="{format_value(bound)}"'
                yield f"{self.name}_bucket{_labels_text(self.label_names, key, le)} {running}"
            labels = _labels_text(self.label_names, key)
            yield f"{self.name}_sum{labels} {format_value(total)}"
            yield f"{self.name}_count{labels} {running}"


class Registry:
    """The set of metrics one daemon exposes; render() gives the ``/metrics`` body."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self._add(metric)
        return metric

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help_text, labels)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_SECONDS_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help_text, labels, buckets)
        self._add(metric)
        return metric

    def add_collector(self, collect: Callable[[], None]) -> None:
        """Run ``collect`` before each render (it sets gauges from live state)."""
        with self._lock:
            self._collectors.append(collect)

    def render(self) -> str:
        with self._lock:
            collectors = list(self._collectors)
            metrics = sorted(self._metrics.values(), key=lambda m: m.name)
        for collect in collectors:
            try:
                collect()
            except Exception:  # a broken collector must not break the whole scrape
                log.exception("metrics collector %r failed", collect)
        return "".join(m.render() for m in metrics)


class DaemonMetrics:
    """Every metric family the daemon exposes, in one place (names are part of the docs).

    Per-camera families are labelled ``camera``; the ingest, memory and engine-queue values are
    refreshed by collectors the daemon adds; the engine and the server update the rest directly.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        r = registry
        # ingest (set by the daemon from the sources' counters)
        self.camera_state = r.gauge(
            "stream_agent_camera_state",
            "1 for the camera's current state (connecting, online, stalled, offline, ended)",
            ("camera", "state"),
        )
        self.camera_fps = r.gauge(
            "stream_agent_camera_fps", "Frames per second delivered by ingest", ("camera",)
        )
        self.camera_frames = r.counter(
            "stream_agent_camera_frames_total", "Frames delivered by ingest", ("camera",)
        )
        self.camera_dropped = r.counter(
            "stream_agent_camera_dropped_frames_total",
            "Frames ingest dropped (newest-wins sampling)",
            ("camera",),
        )
        self.camera_reconnects = r.counter(
            "stream_agent_camera_reconnects_total", "Reconnections of the source", ("camera",)
        )
        # compression and memory (collected from the worker's status)
        self.cacher_reuse_share = r.gauge(
            "stream_agent_cacher_reuse_share",
            "Share of vision tokens reused from the reference frame",
            ("camera",),
        )
        self.pruner_kept_share = r.gauge(
            "stream_agent_pruner_kept_share",
            "Share of visual tokens kept by the pruner",
            ("camera",),
        )
        self.memory_blocks = r.gauge(
            "stream_agent_memory_blocks", "KV blocks held in the memory", ("camera",)
        )
        self.memory_ram_bytes = r.gauge(
            "stream_agent_memory_ram_bytes", "Bytes of the memory held in RAM", ("camera",)
        )
        self.memory_disk_bytes = r.gauge(
            "stream_agent_memory_disk_bytes", "Bytes of the memory stored on disk", ("camera",)
        )
        self.model_ready = r.gauge(
            "stream_agent_model_ready", "1 when the model is loaded and answering"
        )
        # engine
        self.engine_queue_depth = r.gauge(
            "stream_agent_engine_queue_depth",
            "Items waiting for the engine thread",
            ("kind",),
        )
        self.engine_frames_encoded = r.counter(
            "stream_agent_engine_frames_encoded_total",
            "Frames the engine fed to the memory",
            ("camera",),
        )
        self.engine_frames_dropped = r.counter(
            "stream_agent_engine_frames_dropped_total",
            "Frames the engine shed (reason: overflow, shutdown, not_ready, error)",
            ("camera", "reason"),
        )
        self.engine_frame_lag = r.gauge(
            "stream_agent_engine_frame_lag_seconds",
            "Wall time from a frame's capture to the end of its encoding (last batch)",
            ("camera",),
        )
        self.engine_encode_errors = r.counter(
            "stream_agent_engine_encode_errors_total",
            "Frame batches the worker failed to encode",
            ("camera",),
        )
        self.answers = r.counter(
            "stream_agent_answers_total",
            "Questions finished, by outcome (stop, length, cancelled, failed)",
            ("outcome",),
        )
        self.answer_ttft = r.histogram(
            "stream_agent_answer_ttft_seconds",
            "Time from receiving a question to its first token",
        )
        self.answer_tokens_per_s = r.histogram(
            "stream_agent_answer_tokens_per_second",
            "Decoding rate of answers after the first token",
            buckets=RATE_BUCKETS,
        )
        self.answer_deltas_coalesced = r.counter(
            "stream_agent_answer_deltas_coalesced_total",
            "Text deltas merged into the previous one because the event loop fell behind",
        )
        # server
        self.ws_clients = r.gauge("stream_agent_ws_clients", "Connected WebSocket clients")
        self.ws_rejected = r.counter(
            "stream_agent_ws_rejected_total",
            "WebSocket connections refused (reason: max_clients, origin)",
            ("reason",),
        )
        self.ws_errors = r.counter(
            "stream_agent_ws_errors_total", "Error messages sent to clients, by code", ("code",)
        )
        self.ws_slow_disconnects = r.counter(
            "stream_agent_ws_slow_client_disconnects_total",
            "Clients disconnected because they did not read their messages",
        )
        self.http_requests = r.counter(
            "stream_agent_http_requests_total",
            "HTTP requests served, by route and status",
            ("route", "status"),
        )
        self.evidence_frames_evicted = r.counter(
            "stream_agent_evidence_frames_evicted_total",
            "Kept evidence frames evicted to stay within the byte budget",
            ("camera",),
        )
