"""A real server on a loopback port with a real engine around the fake worker.

``running_server(...)`` starts everything the daemon will compose (engine thread, camera board,
metrics, server on port 0) inside the current event loop; ``feed`` plays the daemon's part of
handing frames to the board and the engine. Clients are real ``websockets`` clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from stream_agent.alerts.service import AlertService
from stream_agent.cameras import CameraBoard
from stream_agent.config import EngineConfig, ServerConfig
from stream_agent.engine import Engine
from stream_agent.metrics import DaemonMetrics, Registry
from stream_agent.server import StreamAgentServer
from tests.stream_agent.engine.fake_worker import MODEL_NAME, FakeWorker, make_frame


@dataclass
class Harness:
    server: StreamAgentServer
    engine: Engine
    worker: FakeWorker
    board: CameraBoard
    metrics: DaemonMetrics
    token: str | None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def connect(self, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return connect(self.url, additional_headers=headers, **kwargs)

    async def feed(self, camera: str, count: int, *, start_seq: int = 0) -> None:
        """Offer ``count`` frames of ``camera`` (one second apart, ending now), each encoded
        before the next is offered (so that none is shed)."""
        now = time.time()
        for i in range(count):
            before = self.engine.snapshot().frames_encoded.get(camera, 0)
            frame = make_frame(camera, start_seq + i, wall=now - (count - 1 - i))
            self.board.offer_frame(frame)
            self.engine.submit_frame(frame)
            deadline = time.monotonic() + 5
            while self.engine.snapshot().frames_encoded.get(camera, 0) <= before:
                if time.monotonic() > deadline:
                    raise AssertionError("a frame was not encoded in time")
                await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def running_server(
    *,
    token: str | None = None,
    worker: FakeWorker | None = None,
    cameras: Sequence[str] = ("dock", "door"),
    web_root: Path | None = None,
    board: CameraBoard | None = None,
    engine_config: EngineConfig | None = None,
    alerts: AlertService | None = None,
    metrics: DaemonMetrics | None = None,
    **server_settings: Any,
) -> AsyncIterator[Harness]:
    metrics = metrics or DaemonMetrics(Registry())
    worker = worker or FakeWorker()
    engine = Engine(worker, engine_config or EngineConfig(), metrics=metrics)
    board = board or CameraBoard(cameras, metrics=metrics, evidence_max_side=64)
    config = ServerConfig(host="127.0.0.1", port=0, **server_settings)
    server = StreamAgentServer(
        config,
        engine=engine,
        cameras=board,
        metrics=metrics,
        token=token,
        model_name=MODEL_NAME,
        web_root=web_root,
        alerts=alerts,
    )
    engine.start()
    await server.start()
    try:
        yield Harness(server, engine, worker, board, metrics, token)
    finally:
        await server.stop()
        await engine.aclose("cancel", grace_s=5)
