"""The daemon's metrics on prometheus_client: names, labels and values as a scraper reads them."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from stream_agent.answers import AnswerTimings
from stream_agent.metrics import DaemonMetrics, Registry
from tests.support.prometheus import sample, sample_values

# Every family the daemon exposes: name -> (type, label names). The docs list the same
# (docs/metrics.md); a name here changes only with an entry in its table of renames.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "stream_agent_camera_state": ("gauge", ("camera", "state")),
    "stream_agent_camera_frames_per_second": ("gauge", ("camera",)),
    "stream_agent_camera_frames": ("counter", ("camera",)),
    "stream_agent_camera_dropped_frames": ("counter", ("camera",)),
    "stream_agent_camera_reconnects": ("counter", ("camera",)),
    "stream_agent_cacher_reuse_ratio": ("gauge", ("camera",)),
    "stream_agent_pruner_kept_ratio": ("gauge", ("camera",)),
    "stream_agent_gate_frames": ("counter", ("camera", "decision", "reason")),
    "stream_agent_gate_reused_extensions": ("counter", ("camera",)),
    "stream_agent_memory_blocks": ("gauge", ("camera",)),
    "stream_agent_memory_ram_bytes": ("gauge", ("camera",)),
    "stream_agent_memory_disk_bytes": ("gauge", ("camera",)),
    "stream_agent_model_ready": ("gauge", ()),
    "stream_agent_engine_queue_depth": ("gauge", ("kind",)),
    "stream_agent_engine_frames_encoded": ("counter", ("camera",)),
    "stream_agent_engine_frames_dropped": ("counter", ("camera", "reason")),
    "stream_agent_engine_checks_dropped": ("counter", ("reason",)),
    "stream_agent_engine_frame_lag_seconds": ("gauge", ("camera",)),
    "stream_agent_engine_encode_errors": ("counter", ("camera",)),
    "stream_agent_answers": ("counter", ("outcome",)),
    "stream_agent_answer_ttft_seconds": ("histogram", ()),
    "stream_agent_answer_tokens_per_second": ("histogram", ()),
    "stream_agent_answer_retrieval_seconds": ("histogram", ()),
    "stream_agent_answer_blocks_loaded": ("counter", ()),
    "stream_agent_answer_disk_reads": ("counter", ()),
    "stream_agent_answer_deltas_coalesced": ("counter", ()),
    "stream_agent_ws_clients": ("gauge", ()),
    "stream_agent_ws_rejected": ("counter", ("reason",)),
    "stream_agent_ws_errors": ("counter", ("code",)),
    "stream_agent_ws_slow_client_disconnects": ("counter", ()),
    "stream_agent_http_requests": ("counter", ("route", "status")),
    "stream_agent_evidence_frames_evicted": ("counter", ("camera",)),
    "stream_agent_ws_event_drops": ("counter", ()),
    "stream_agent_alert_rule_checks": ("counter", ("rule",)),
    "stream_agent_alert_gate_stops": ("counter", ("rule", "gate")),
    "stream_agent_alert_events": ("counter", ("rule", "type")),
    "stream_agent_alert_rules": ("gauge", ()),
    "stream_agent_alert_open_events": ("gauge", ()),
    "stream_agent_mqtt_connection_state": ("gauge", ("state",)),
    "stream_agent_mqtt_connects": ("counter", ()),
    "stream_agent_mqtt_outbox_messages": ("gauge", ()),
    "stream_agent_mqtt_outbox_dropped": ("counter", ()),
    "stream_agent_mqtt_transient_dropped": ("counter", ()),
    "stream_agent_mqtt_delivered": ("counter", ()),
}


def _filled() -> DaemonMetrics:
    """Metrics with one sample in every family (pushed ones updated, scraped ones refreshed)."""
    m = DaemonMetrics(Registry())

    def refresh() -> None:
        m.camera_state.clear()
        for state in ("connecting", "online", "stalled", "offline", "ended"):
            m.camera_state.set(1.0 if state == "online" else 0.0, camera="dock", state=state)
        m.camera_fps.set(0.5, camera="dock")
        m.camera_frames.mirror(120, camera="dock")
        m.camera_dropped.mirror(3, camera="dock")
        m.camera_reconnects.mirror(1, camera="dock")
        m.cacher_reuse_share.set(0.375, camera="dock")
        m.pruner_kept_share.set(0.25, camera="dock")
        m.gate_frames.mirror(40, camera="dock", decision="gated", reason="unchanged")
        m.gate_frames.mirror(3, camera="dock", decision="passed", reason="changed")
        m.gate_reused_extensions.mirror(2, camera="dock")
        m.memory_blocks.set(7, camera="dock")
        m.memory_ram_bytes.set(4096, camera="dock")
        m.memory_disk_bytes.set(2**40, camera="dock")
        m.model_ready.set(1)
        m.engine_queue_depth.set(2, kind="frames")
        m.engine_queue_depth.set(0, kind="questions")
        m.engine_frame_lag.set(0.125, camera="dock")
        m.alert_rule_checks.mirror(3, rule="at-door")
        m.alert_gate_stops.mirror(2, rule="at-door", gate="motion")
        m.alert_rules.set(1)
        m.alert_open_events.set(0)
        m.mqtt_state.set(1, state="online")
        m.mqtt_connects.mirror(1)
        m.mqtt_outbox.set(0)
        m.mqtt_outbox_dropped.mirror(0)
        m.mqtt_transient_dropped.mirror(0)
        m.mqtt_delivered.mirror(4)

    m.registry.add_collector(refresh)
    m.engine_frames_encoded.inc(5, camera="dock")
    m.engine_frames_dropped.inc(2, camera="dock", reason="overflow")
    m.engine_encode_errors.inc(camera="dock")
    m.engine_checks_dropped.inc(reason="overflow")
    m.answers.inc(outcome="stop")
    m.answers.inc(outcome="stop")
    m.answers.inc(outcome="failed")
    m.answer_ttft.observe(0.3)
    m.answer_ttft.observe(3.0)
    m.answer_tokens_per_s.observe(12.0)
    m.answer_retrieval.observe(0.2)
    m.answer_blocks_loaded.inc(14)
    m.answer_disk_reads.inc(3)
    m.answer_deltas_coalesced.inc(4)
    m.ws_clients.set(2)
    m.ws_rejected.inc(reason="max_clients")
    m.ws_errors.inc(code="bad_request")
    m.ws_slow_disconnects.inc()
    m.http_requests.inc(route="metrics", status="200")
    m.evidence_frames_evicted.inc(9, camera="dock")
    m.ws_event_drops.inc()
    m.alert_events.inc(rule="at-door", type="start")
    return m


def test_every_family_has_its_name_type_and_labels() -> None:
    text = _filled().registry.render()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in FAMILIES.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, name
        assert family.documentation, name
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            assert set(s.labels) - {"le"} == set(labels), (name, s)
    ours = {n for n in families if not n.endswith("_created")}
    assert ours == set(FAMILIES)


def test_names_follow_the_prometheus_conventions() -> None:
    text = _filled().registry.render()
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue
        assert family.name.startswith("stream_agent_")
        if family.type == "counter":
            assert f"{family.name}_total" in {s.name for s in family.samples}
        else:
            assert not family.name.endswith("_total"), family.name
    for name, (kind, _) in FAMILIES.items():
        if kind == "histogram":
            assert name.endswith(("_seconds", "_per_second")), name


def test_values_as_a_scraper_reads_them() -> None:
    text = _filled().registry.render()
    values = sample_values(text)

    def value(name: str, **labels: str) -> float | None:
        return values.get((name, frozenset(labels.items())))

    assert value("stream_agent_camera_state", camera="dock", state="online") == 1
    assert value("stream_agent_camera_state", camera="dock", state="stalled") == 0
    assert value("stream_agent_camera_frames_per_second", camera="dock") == 0.5
    assert value("stream_agent_camera_frames_total", camera="dock") == 120
    assert value("stream_agent_camera_dropped_frames_total", camera="dock") == 3
    assert value("stream_agent_camera_reconnects_total", camera="dock") == 1
    assert value("stream_agent_cacher_reuse_ratio", camera="dock") == 0.375
    assert value("stream_agent_pruner_kept_ratio", camera="dock") == 0.25
    gated = {"camera": "dock", "decision": "gated", "reason": "unchanged"}
    assert value("stream_agent_gate_frames_total", **gated) == 40
    assert value("stream_agent_gate_reused_extensions_total", camera="dock") == 2
    assert value("stream_agent_memory_disk_bytes", camera="dock") == 2**40
    assert value("stream_agent_engine_queue_depth", kind="frames") == 2
    assert value("stream_agent_engine_frames_dropped_total", camera="dock", reason="overflow") == 2
    assert value("stream_agent_answers_total", outcome="stop") == 2
    assert value("stream_agent_answers_total", outcome="failed") == 1
    assert value("stream_agent_answer_ttft_seconds_count") == 2
    assert value("stream_agent_answer_ttft_seconds_sum") == pytest.approx(3.3)
    assert value("stream_agent_answer_ttft_seconds_bucket", le="0.5") == 1
    assert value("stream_agent_answer_ttft_seconds_bucket", le="5.0") == 2
    assert value("stream_agent_answer_ttft_seconds_bucket", le="+Inf") == 2
    assert value("stream_agent_answer_tokens_per_second_bucket", le="20.0") == 1
    assert value("stream_agent_answer_retrieval_seconds_bucket", le="0.25") == 1
    assert value("stream_agent_answer_retrieval_seconds_sum") == pytest.approx(0.2)
    assert value("stream_agent_answer_blocks_loaded_total") == 14
    assert value("stream_agent_answer_disk_reads_total") == 3
    assert value("stream_agent_answer_deltas_coalesced_total") == 4
    assert value("stream_agent_ws_clients") == 2
    assert value("stream_agent_http_requests_total", route="metrics", status="200") == 1


def test_the_accessors_read_what_a_scrape_shows() -> None:
    m = _filled()
    assert m.answers.value(outcome="stop") == 2 and m.answers.value(outcome="length") == 0
    assert m.answer_ttft.count() == 2
    assert m.ws_clients.value() == 2
    assert m.ws_slow_disconnects.value() == 1
    with pytest.raises(ValueError, match="takes labels"):
        m.answers.inc(camera="dock")
    with pytest.raises(ValueError):
        m.answers.inc(-1, outcome="stop")


def test_refresh_runs_at_each_scrape_and_a_broken_one_spares_the_rest() -> None:
    m = DaemonMetrics(Registry())
    calls: list[int] = []

    def refresh() -> None:
        calls.append(1)
        m.memory_blocks.set(len(calls), camera="dock")

    def broken() -> None:
        raise RuntimeError("a part failed to report")

    m.registry.add_collector(broken)
    m.registry.add_collector(refresh)
    assert sample(m.registry.render(), "stream_agent_memory_blocks", camera="dock") == 1
    assert sample(m.registry.render(), "stream_agent_memory_blocks", camera="dock") == 2


def test_scraped_gauges_forget_label_sets_on_clear() -> None:
    m = DaemonMetrics(Registry())
    m.camera_state.set(1, camera="gone", state="online")
    m.camera_state.clear()
    m.camera_state.set(1, camera="dock", state="online")
    text = m.registry.render()
    assert sample(text, "stream_agent_camera_state", camera="gone", state="online") is None
    assert sample(text, "stream_agent_camera_state", camera="dock", state="online") == 1


def test_label_values_are_escaped() -> None:
    m = DaemonMetrics(Registry())
    odd = 'a "quoted"\\ name\nnext'
    m.ws_errors.inc(code=odd)
    m.memory_blocks.set(3, camera=odd)
    text = m.registry.render()
    assert sample(text, "stream_agent_ws_errors_total", code=odd) == 1
    assert sample(text, "stream_agent_memory_blocks", camera=odd) == 3


def test_two_registries_are_independent() -> None:
    """No global registry: two daemons in one process keep their own numbers."""
    a, b = DaemonMetrics(Registry()), DaemonMetrics(Registry())
    a.answers.inc(outcome="stop")
    assert a.answers.value(outcome="stop") == 1 and b.answers.value(outcome="stop") == 0


def test_updates_from_many_threads_add_up() -> None:
    m = DaemonMetrics(Registry())

    def work() -> None:
        for _ in range(1000):
            m.engine_frames_encoded.inc(camera="dock")
            m.answer_ttft.observe(0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.engine_frames_encoded.value(camera="dock") == 4000
    assert m.answer_ttft.count() == 4000


def test_content_negotiation() -> None:
    m = _filled()
    body, kind = m.registry.exposition("")
    assert kind == "text/plain; version=0.0.4; charset=utf-8"
    assert body.decode() == m.registry.render()
    body, kind = m.registry.exposition("application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(body.decode())}
    assert families["stream_agent_answers"].type == "counter"
    assert families["stream_agent_memory_blocks"].type == "gauge"


def test_an_answers_figures_reach_their_families() -> None:
    m = DaemonMetrics(Registry())
    m.observe_answer(
        "stop",
        AnswerTimings(
            ttft_s=0.4,
            tokens_per_s=9.0,
            total_s=1.0,
            retrieval_s=0.3,
            blocks_loaded=6,
            disk_reads=2,
        ),
    )
    # a worker without a memory knows none of the retrieval figures: nothing is made up
    m.observe_answer("cancelled", AnswerTimings(ttft_s=None, tokens_per_s=None, total_s=0.1))
    assert m.answers.value(outcome="stop") == 1 and m.answers.value(outcome="cancelled") == 1
    assert m.answer_ttft.count() == 1 and m.answer_tokens_per_s.count() == 1
    assert m.answer_retrieval.count() == 1
    assert m.answer_blocks_loaded.value() == 6 and m.answer_disk_reads.value() == 2
