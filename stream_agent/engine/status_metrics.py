"""The daemon's engine and memory gauges, filled from an :class:`EngineStatus`.

One function for both placements: the local :class:`~stream_agent.engine.Engine` fills them from
its own snapshot at every scrape, the Ray front from the snapshots its engine actors sent last
(:mod:`stream_agent.placement.ray_group`), so ``/metrics`` reads the same either way.
"""

from __future__ import annotations

from stream_agent.engine.records import EngineStatus
from stream_agent.metrics import DaemonMetrics


def publish_status(m: DaemonMetrics, status: EngineStatus) -> None:
    """Set the queue, readiness, frame lag and per-camera memory gauges from ``status``."""
    m.engine_queue_depth.set(status.queued_frames, kind="frames")
    m.engine_queue_depth.set(status.queued_questions, kind="questions")
    m.engine_queue_depth.set(status.queued_checks, kind="checks")
    m.model_ready.set(1.0 if status.worker.ready else 0.0)
    for camera, lag in status.frame_lag_s.items():
        m.engine_frame_lag.set(lag, camera=camera)
    for mem in status.worker.cameras:
        m.memory_blocks.set(mem.blocks, camera=mem.camera)
        m.memory_ram_bytes.set(mem.ram_bytes, camera=mem.camera)
        m.memory_disk_bytes.set(mem.disk_bytes, camera=mem.camera)
        if mem.cacher_reuse_share is not None:
            m.cacher_reuse_share.set(mem.cacher_reuse_share, camera=mem.camera)
        if mem.pruner_kept_share is not None:
            m.pruner_kept_share.set(mem.pruner_kept_share, camera=mem.camera)
        for reason, count in mem.gate_reasons:
            decision = "gated" if reason == "unchanged" else "passed"
            m.gate_frames.mirror(count, camera=mem.camera, decision=decision, reason=reason)
        m.gate_reused_extensions.mirror(mem.reused_extensions, camera=mem.camera)
