"""The daemon: config -> model -> worker -> engine -> cameras -> server, and back down in order.

:class:`Daemon` composes the parts from one validated :class:`~stream_agent.config.DaemonConfig`
and the secrets read at start-up:

* a :class:`~stream_agent.pipeline.ModelWorker` (the model, one vision chain per camera, the
  ReKV memory, which loads what earlier runs stored) driven by an
  :class:`~stream_agent.engine.Engine` thread;
* one :class:`~stream_agent.pipeline.CameraFeed` task per enabled camera (ingest -> engine and
  camera board); a camera that fails or goes offline only changes its own state;
* the :class:`~stream_agent.server.StreamAgentServer` (WebSocket and HTTP on one port);
* the alerts (:class:`~stream_agent.daemon_alerts.DaemonAlerts`: rules checked by the engine
  between questions and frames, events in the history, on MQTT and to WebSocket subscribers).

Start-up: the engine thread starts loading the model while the server already answers
``/healthz`` and ``/readyz`` ("loading the model"); once the model and the stored memories are
loaded the cameras start. A model that cannot be loaded stops everything and raises its error.

Shutdown (:meth:`Daemon.shutdown`, on SIGINT/SIGTERM with :func:`serve`): the cameras stop, the
server stops listening and refuses new questions while the answers in flight finish (or are
cancelled, per ``engine.shutdown``) within ``engine.shutdown_grace_s``, then the engine flushes
the memories to disk and closes the model. The alerts stop before the server and the engine:
open events end (``shutdown``), the outbox gets a moment to drain and MQTT hears ``offline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import cast

from stream_agent.alerts.service import AlertEngine
from stream_agent.cameras import CameraBoard
from stream_agent.config import DaemonConfig, Secrets
from stream_agent.daemon_alerts import DaemonAlerts
from stream_agent.engine import Engine
from stream_agent.errors import ModelError
from stream_agent.memory.frames import FrameStore
from stream_agent.metrics import DaemonMetrics, Registry
from stream_agent.models.loading import ModelLoader, model_loader
from stream_agent.pipeline.feed import CameraFeed
from stream_agent.pipeline.worker import ModelWorker
from stream_agent.server import StreamAgentServer, default_web_root
from stream_agent.server.app import package_version

log = logging.getLogger(__name__)

COUNTERS_INTERVAL_S = 1.0
FEED_STOP_WAIT_S = 5.0
ENGINE_FINAL_WAIT_S = 120.0


def engine_alerts(engine: Engine) -> AlertEngine:
    """The model side of the alerts: rule checks and descriptions as engine work."""
    from stream_agent.pipeline.alerts import EngineAlerts

    return EngineAlerts(engine)


class Daemon:
    """The composed daemon (see the module docstring)."""

    def __init__(
        self,
        config: DaemonConfig,
        secrets: Secrets,
        *,
        load: ModelLoader | None = None,
        web_root: Path | None = None,
        alert_engine: Callable[[Engine], AlertEngine] = engine_alerts,
    ) -> None:
        self.config = config
        self.metrics = DaemonMetrics(Registry())
        cameras = config.enabled_cameras
        s = config.server
        self.board = CameraBoard(
            [c.name for c in cameras],
            evidence_bytes=int(s.evidence_frames_bytes),
            evidence_max_side=s.evidence_frame_max_side,
            metrics=self.metrics,
        )
        # evidence frames live with the memory (and survive a restart with it)
        self.frames = FrameStore(config.memory.store_dir / "frames")
        self.worker = ModelWorker(
            config,
            load=load or model_loader(config.model),
            model_name=config.model.source,
            on_frame=self._note_frame,
            frames=self.frames,
        )
        if config.engine.placement.kind == "ray":
            # engines on a Ray cluster (docs/placement.md); Ray is imported only here
            from stream_agent.placement.ray_group import RayEngineGroup

            group = RayEngineGroup(config, metrics=self.metrics, on_frame=self._note_frame)
            self._opened = group.opened
            self.engine = cast(Engine, group)  # the same methods; the server sees no difference
        else:
            self.engine = Engine(self.worker, config.engine, metrics=self.metrics)
            self._opened = self.worker.opened
        self.alerts = DaemonAlerts(
            config,
            secrets,
            board=self.board,
            engine=alert_engine(self.engine),
            metrics=self.metrics,
            frames_root=self.frames.root,
            sw_version=package_version(),
        )
        self.server = StreamAgentServer(
            s,
            engine=self.engine,
            cameras=self.board,
            frames=self.frames,
            metrics=self.metrics,
            token=secrets.token,
            model_name=config.model.source,
            web_root=s.web_root or web_root or default_web_root(),
            alerts=self.alerts.service,
        )
        self.feeds = [
            CameraFeed(c, secrets.camera_url(c), engine=self.engine, board=self.board)
            for c in cameras
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    def _note_frame(self, camera: str, wall_time: float, changed_share: float | None) -> None:
        self.alerts.note_frame(camera, wall_time, changed_share)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        """Start the engine (model loading), the server, then, once the model is loaded, the
        cameras. Raises the model's error (after stopping what was started) if it fails."""
        for line in self.config.summary().splitlines():
            log.info("config: %s", line)
        self._started = True
        self.engine.start()
        try:
            await self.server.start()
            # shielded: a SIGTERM while the model loads must not cancel the worker's own future
            await asyncio.shield(asyncio.wrap_future(self._opened))
        except BaseException:
            await self.alerts.stop()
            await self._stop_core(drain_s=0.0, mode="cancel")
            raise
        for feed in self.feeds:
            self._tasks.append(asyncio.create_task(feed.run(), name=f"camera-{feed.name}"))
        self.alerts.start()
        self._tasks.append(asyncio.create_task(self._refresh_counters(), name="counters"))
        log.info(
            "daemon ready: %d camera(s), model %s, port %d",
            len(self.feeds),
            self.config.model.source,
            self.port,
        )

    async def shutdown(self) -> None:
        """Stop the cameras, drain the server, flush the memories, close the model."""
        if not self._started:
            return
        self._started = False
        mode = self.config.engine.shutdown
        log.info("shutting down (%s answers in flight)", mode)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=FEED_STOP_WAIT_S)
            if pending:
                log.warning("%d camera feed(s) did not stop in time; left behind", len(pending))
        self._tasks.clear()
        await self.alerts.stop()  # before the engine: open events end, MQTT hears offline
        drain = self.config.engine.shutdown_grace_s if mode == "finish" else 0.0
        await self._stop_core(drain_s=drain, mode=mode)
        log.info("shutdown complete")

    async def _stop_core(self, *, drain_s: float, mode: str) -> None:
        await self.server.stop(drain_s=drain_s)
        ended = await self.engine.aclose("cancel" if mode == "cancel" else "finish")
        if not ended:
            # A batch of frames being encoded cannot be interrupted (a large model on a CPU
            # takes seconds per frame); wait for it, so that the memories are flushed.
            wait = max(ENGINE_FINAL_WAIT_S, 6 * self.config.engine.shutdown_grace_s)
            log.warning("waiting up to %.0f s more for the engine to finish its batch", wait)
            ended = await self.engine.aclose("cancel", grace_s=wait)
        if not ended:
            log.error("the engine thread did not end; the memories were not flushed")

    async def _refresh_counters(self) -> None:
        while True:
            for feed in self.feeds:
                feed.refresh_counters()
            await asyncio.sleep(COUNTERS_INTERVAL_S)


async def serve(
    config: DaemonConfig,
    secrets: Secrets,
    *,
    load: ModelLoader | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
) -> int:
    """Run the daemon until SIGINT or SIGTERM; return the exit status (0 after a clean stop).

    ``on_ready`` is called once everything runs (the CLI prints the address there).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if not received:
            log.info("received %s: shutting down", sig.name)
        else:
            log.info("received %s again; still shutting down", sig.name)
        received.append(sig.name)
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    daemon = Daemon(config, secrets, load=load)
    waiter = asyncio.create_task(stop.wait())
    try:
        start = asyncio.create_task(daemon.start())
        await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():  # a signal during start-up: stop what has started
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError, ModelError):
                await start
        else:
            start.result()  # raises a start-up failure (everything is stopped by then)
            if on_ready is not None:
                on_ready(daemon)
            await waiter
        await daemon.shutdown()
        return 0
    finally:
        waiter.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
