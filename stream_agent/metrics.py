"""The daemon's metrics, on ``prometheus_client`` with a registry of its own (never the global one).

The daemon builds one :class:`Registry`, hands it (or the :class:`DaemonMetrics` built on it) to
each part explicitly, and the HTTP server renders it on ``/metrics`` in the format the scraper
asks for (:meth:`Registry.exposition`). Two kinds of metric live in it:

* pushed: counters, gauges and histograms the engine and the server update as things happen
  (``prometheus_client``'s own classes, behind :class:`Counter`, :class:`Gauge` and
  :class:`Histogram`, which take the label values as keywords and are safe from any thread);
* scraped: values cheaper to read at scrape time than to push (camera states, queue depths,
  memory sizes, counters kept by ingest). They are custom collectors (:class:`ScrapedGauge`,
  :class:`ScrapedCounter`) filled by refresh callables the parts register with
  :meth:`Registry.add_collector`; every scrape runs those first.

Metric names and labels are part of the docs (``docs/metrics.md``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from stream_agent.answers import AnswerTimings

log = logging.getLogger(__name__)

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


def _sample_value(
    metric: _Counter | _Gauge | _Histogram, sample_name: str, labels: dict[str, str]
) -> float | None:
    """The value of one sample of ``metric`` as a scrape would show it (None if absent)."""
    wanted = {k: str(v) for k, v in labels.items()}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == wanted:
                return float(sample.value)
    return None


class _Pushed:
    """A ``prometheus_client`` metric that takes its label values as keyword arguments."""

    def __init__(
        self, metric: _Counter | _Gauge | _Histogram, name: str, labels: Sequence[str]
    ) -> None:
        self._metric = metric
        self.name = name
        self.label_names = tuple(labels)

    def _child(self, labels: dict[str, str]) -> _Counter | _Gauge | _Histogram:
        if set(labels) != set(self.label_names):
            raise ValueError(
                f"{self.name} takes labels {list(self.label_names)}, got {sorted(labels)}"
            )
        if not self.label_names:
            return self._metric
        return self._metric.labels(**{k: str(v) for k, v in labels.items()})


class Counter(_Pushed):
    """A value that only goes up; exposed as ``<name>_total`` (and the library's ``_created``)."""

    def __init__(
        self, registry: CollectorRegistry, name: str, help_text: str, labels: Sequence[str] = ()
    ) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: counter names end in _total")
        super().__init__(_Counter(name, help_text, labels, registry=registry), name, labels)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        child = self._child(labels)
        assert isinstance(child, _Counter)
        child.inc(amount)

    def value(self, **labels: str) -> float:
        self._child(labels)  # checks the label names
        return _sample_value(self._metric, self.name, labels) or 0.0


class Gauge(_Pushed):
    """A value that goes up and down, set as things happen."""

    def __init__(
        self, registry: CollectorRegistry, name: str, help_text: str, labels: Sequence[str] = ()
    ) -> None:
        super().__init__(_Gauge(name, help_text, labels, registry=registry), name, labels)

    def set(self, value: float, **labels: str) -> None:
        child = self._child(labels)
        assert isinstance(child, _Gauge)
        child.set(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        child = self._child(labels)
        assert isinstance(child, _Gauge)
        child.inc(amount)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def value(self, **labels: str) -> float | None:
        self._child(labels)
        return _sample_value(self._metric, self.name, labels)


class Histogram(_Pushed):
    """Observations counted into cumulative buckets, with ``_sum`` and ``_count``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_SECONDS_BUCKETS,
    ) -> None:
        metric = _Histogram(name, help_text, labels, registry=registry, buckets=tuple(buckets))
        super().__init__(metric, name, labels)

    def observe(self, value: float, **labels: str) -> None:
        child = self._child(labels)
        assert isinstance(child, _Histogram)
        child.observe(value)

    def count(self, **labels: str) -> int:
        self._child(labels)
        return int(_sample_value(self._metric, f"{self.name}_count", labels) or 0)


class _Scraped(Collector):
    """A family whose samples are set at scrape time by the parts' refresh callables."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(
                f"{self.name} takes labels {list(self.label_names)}, got {sorted(labels)}"
            )
        return tuple(str(labels[n]) for n in self.label_names)

    def _put(self, value: float, labels: dict[str, str]) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def value(self, **labels: str) -> float | None:
        with self._lock:
            return self._values.get(self._key(labels))

    def clear(self) -> None:
        """Forget label sets that may no longer exist (before setting the current ones)."""
        with self._lock:
            self._values.clear()

    def _family(self) -> GaugeMetricFamily | CounterMetricFamily:
        raise NotImplementedError

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            family.add_metric(list(key), value)
        return [family]


class ScrapedGauge(_Scraped):
    """A gauge read from live state at scrape time."""

    def set(self, value: float, **labels: str) -> None:
        self._put(value, labels)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.help, labels=self.label_names)


class ScrapedCounter(_Scraped):
    """A counter kept elsewhere (e.g. by an ingest source), copied in at scrape time."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: counter names end in _total")
        super().__init__(name, help_text, labels)

    def mirror(self, value: float, **labels: str) -> None:
        """Copy the counter's current value."""
        self._put(value, labels)

    def _family(self) -> CounterMetricFamily:
        # the family's name is given without the suffix; the exposition adds ``_total``
        return CounterMetricFamily(
            self.name.removesuffix("_total"), self.help, labels=self.label_names
        )


class _Refresh(Collector):
    """Registered first, so that a scrape runs the refresh callables before reading the
    scraped families (the registry collects in registration order). Yields no metric."""

    def __init__(self) -> None:
        self._callables: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def add(self, refresh: Callable[[], None]) -> None:
        with self._lock:
            self._callables.append(refresh)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            callables = list(self._callables)
        for refresh in callables:
            try:
                refresh()
            except Exception:  # a broken refresh must not break the whole scrape
                log.exception("metrics refresh %r failed", refresh)
        return iter(())


class Registry:
    """The set of metrics one daemon exposes: a ``CollectorRegistry`` of its own."""

    def __init__(self) -> None:
        self.collectors = CollectorRegistry(auto_describe=False)
        self._refresh = _Refresh()
        self.collectors.register(self._refresh)

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self.collectors, name, help_text, labels)

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self.collectors, name, help_text, labels)

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_SECONDS_BUCKETS,
    ) -> Histogram:
        return Histogram(self.collectors, name, help_text, labels, buckets)

    def scraped_gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> ScrapedGauge:
        family = ScrapedGauge(name, help_text, labels)
        self.collectors.register(family)
        return family

    def scraped_counter(
        self, name: str, help_text: str, labels: Sequence[str] = ()
    ) -> ScrapedCounter:
        family = ScrapedCounter(name, help_text, labels)
        self.collectors.register(family)
        return family

    def add_collector(self, refresh: Callable[[], None]) -> None:
        """Run ``refresh`` at each scrape, before the scraped families are read (it sets them
        from live state)."""
        self._refresh.add(refresh)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type, in the format the ``Accept`` header asks
        for (Prometheus text 0.0.4 by default, OpenMetrics where asked)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.collectors), content_type

    def render(self) -> str:
        """The Prometheus text format (0.0.4), for logs and tests."""
        return self.exposition()[0].decode("utf-8")


class DaemonMetrics:
    """Every metric family the daemon exposes, in one place (names are part of the docs).

    Per-camera families are labelled ``camera``; the ingest, memory and engine-queue values are
    scraped (refreshed by callables the camera board and the engine add); the engine and the
    server update the rest directly.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        r = registry
        # ingest (scraped from the camera board, which the daemon keeps up to date)
        self.camera_state = r.scraped_gauge(
            "stream_agent_camera_state",
            "1 for the camera's current state (connecting, online, stalled, offline, ended)",
            ("camera", "state"),
        )
        self.camera_fps = r.scraped_gauge(
            "stream_agent_camera_frames_per_second",
            "Frames per second delivered by ingest",
            ("camera",),
        )
        self.camera_frames = r.scraped_counter(
            "stream_agent_camera_frames_total", "Frames delivered by ingest", ("camera",)
        )
        self.camera_dropped = r.scraped_counter(
            "stream_agent_camera_dropped_frames_total",
            "Frames ingest dropped (newest-wins sampling)",
            ("camera",),
        )
        self.camera_reconnects = r.scraped_counter(
            "stream_agent_camera_reconnects_total", "Reconnections of the source", ("camera",)
        )
        # compression and memory (scraped from the worker's status)
        self.cacher_reuse_share = r.scraped_gauge(
            "stream_agent_cacher_reuse_ratio",
            "Share of vision tokens reused from the reference frame (0 to 1)",
            ("camera",),
        )
        self.pruner_kept_share = r.scraped_gauge(
            "stream_agent_pruner_kept_ratio",
            "Share of visual tokens kept by the pruner (0 to 1)",
            ("camera",),
        )
        self.gate_frames = r.scraped_counter(
            "stream_agent_gate_frames_total",
            "Frames the change gate decided on, by decision (passed, gated) and reason "
            "(first, changed, brightness, max_age, max_skipped, shape, restart, disabled, "
            "unchanged)",
            ("camera", "decision", "reason"),
        )
        self.gate_reused_extensions = r.scraped_counter(
            "stream_agent_gate_reused_extensions_total",
            "Passed frames the cacher reused whole from the newest block's frame: the block's "
            "time span was extended instead of storing it again",
            ("camera",),
        )
        self.memory_blocks = r.scraped_gauge(
            "stream_agent_memory_blocks", "KV blocks held in the memory", ("camera",)
        )
        self.memory_ram_bytes = r.scraped_gauge(
            "stream_agent_memory_ram_bytes", "Bytes of the memory held in RAM", ("camera",)
        )
        self.memory_disk_bytes = r.scraped_gauge(
            "stream_agent_memory_disk_bytes", "Bytes of the memory stored on disk", ("camera",)
        )
        self.model_ready = r.scraped_gauge(
            "stream_agent_model_ready", "1 when the model is loaded and answering"
        )
        # engine
        self.engine_queue_depth = r.scraped_gauge(
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
        self.engine_checks_dropped = r.counter(
            "stream_agent_engine_checks_dropped_total",
            "Rule checks the engine shed (reason: overflow, shutdown)",
            ("reason",),
        )
        self.engine_frame_lag = r.scraped_gauge(
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
        self.answer_retrieval = r.histogram(
            "stream_agent_answer_retrieval_seconds",
            "Time of an answer's retrieval pass (choosing and loading blocks, prefill)",
        )
        self.answer_blocks_loaded = r.counter(
            "stream_agent_answer_blocks_loaded_total",
            "Memory blocks answers' contexts were built from (summed over answers)",
        )
        self.answer_disk_reads = r.counter(
            "stream_agent_answer_disk_reads_total",
            "Block layers answers read from disk (misses of the memory's RAM tier)",
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
        self.ws_event_drops = r.counter(
            "stream_agent_ws_event_drops_total",
            "Alert event pushes dropped because a connection's event queue was full",
        )
        # alerts (scraped from the alert service, except the events, counted as they happen)
        self.alert_rule_checks = r.scraped_counter(
            "stream_agent_alert_rule_checks_total",
            "Rule checks that reached the model, by rule",
            ("rule",),
        )
        self.alert_gate_stops = r.scraped_counter(
            "stream_agent_alert_gate_stops_total",
            "Rule checks stopped before the model, by rule and gate",
            ("rule", "gate"),
        )
        self.alert_events = r.counter(
            "stream_agent_alert_events_total",
            "Alert event lifecycle steps (start, update, end), by rule",
            ("rule", "type"),
        )
        self.alert_rules = r.scraped_gauge("stream_agent_alert_rules", "Alert rules in force")
        self.alert_open_events = r.scraped_gauge(
            "stream_agent_alert_open_events", "Alert events now open"
        )
        self.mqtt_state = r.scraped_gauge(
            "stream_agent_mqtt_connection_state",
            "1 for the MQTT connection's current state (connecting, online, offline, refused, "
            "stopped, disabled)",
            ("state",),
        )
        self.mqtt_connects = r.scraped_counter(
            "stream_agent_mqtt_connects_total", "Successful connections to the MQTT broker"
        )
        self.mqtt_outbox = r.scraped_gauge(
            "stream_agent_mqtt_outbox_messages", "Event messages waiting in the MQTT outbox"
        )
        self.mqtt_outbox_dropped = r.scraped_counter(
            "stream_agent_mqtt_outbox_dropped_total",
            "Event messages dropped from the full MQTT outbox (oldest first)",
        )
        self.mqtt_transient_dropped = r.scraped_counter(
            "stream_agent_mqtt_transient_dropped_total",
            "Non-event MQTT messages (stats, command replies) dropped while offline",
        )
        self.mqtt_delivered = r.scraped_counter(
            "stream_agent_mqtt_delivered_total",
            "Event messages the broker acknowledged",
        )
        self.evidence_frames_evicted = r.counter(
            "stream_agent_evidence_frames_evicted_total",
            "Kept evidence frames evicted to stay within the byte budget",
            ("camera",),
        )

    def observe_answer(self, outcome: str, timings: AnswerTimings) -> None:
        """Count a finished answer and observe its figures (those its worker measured)."""
        self.answers.inc(outcome=outcome)
        if timings.ttft_s is not None:
            self.answer_ttft.observe(timings.ttft_s)
        if timings.tokens_per_s is not None:
            self.answer_tokens_per_s.observe(timings.tokens_per_s)
        if timings.retrieval_s is not None:
            self.answer_retrieval.observe(timings.retrieval_s)
        if timings.blocks_loaded:
            self.answer_blocks_loaded.inc(timings.blocks_loaded)
        if timings.disk_reads:
            self.answer_disk_reads.inc(timings.disk_reads)
