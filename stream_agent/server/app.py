"""The daemon's server: WebSocket (``/ws``) and HTTP on one port.

Built from a :class:`~stream_agent.config.ServerConfig`, an :class:`~stream_agent.engine.Engine`,
a :class:`~stream_agent.cameras.CameraBoard` and the daemon's metrics; it owns nothing
else. ``async with StreamAgentServer(...) as server:`` listens (``server.port`` is the bound
port, useful with port 0) and closes every connection on exit.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server, ServerConnection, serve

from stream_agent.alerts.service import AlertService
from stream_agent.cameras import CameraBoard
from stream_agent.config import ServerConfig
from stream_agent.engine import Engine
from stream_agent.metrics import DaemonMetrics
from stream_agent.server.context import ServerContext
from stream_agent.server.http import HttpRoutes
from stream_agent.server.session import Session

if TYPE_CHECKING:  # the server only reads frames; it never pulls in the memory's stack
    from stream_agent.memory.frames import FrameStore

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 3.0
END_IN_FLIGHT_S = 5.0
"""On shutdown, how long cancelled answers may take to end by themselves before the server
sends their ``answer`` (finish_reason ``cancelled``) itself."""
"""How long ``stop`` waits for clients to finish the closing handshake before dropping them."""


def package_version() -> str:
    try:
        return version("stream-agent")
    except PackageNotFoundError:
        return "dev"


class StreamAgentServer:
    """Serves the protocol and the HTTP routes for one engine and its cameras."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        engine: Engine,
        cameras: CameraBoard,
        metrics: DaemonMetrics,
        token: str | None = None,
        model_name: str | None = None,
        web_root: Path | None = None,
        alerts: AlertService | None = None,
        frames: FrameStore | None = None,
    ) -> None:
        self._ctx = ServerContext(
            config=config,
            engine=engine,
            cameras=cameras,
            frames=frames,
            metrics=metrics,
            token=token,
            model_name=model_name,
            web_root=web_root,
            version=package_version(),
            alerts=alerts,
        )
        self._routes = HttpRoutes(self._ctx)
        self._sessions: set[Session] = set()
        self._server: Server | None = None

    @property
    def context(self) -> ServerContext:
        return self._ctx

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def clients(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        cfg = self._ctx.config
        try:
            self._server = await serve(
                self._handle,
                cfg.host,
                cfg.port,
                process_request=self._routes.process_request,
                max_size=cfg.transport_max_message_bytes,
                max_queue=16,
                write_limit=cfg.write_limit_bytes,
                ping_interval=cfg.ping_interval_s or None,
                ping_timeout=cfg.ping_interval_s or None,
                close_timeout=CLOSE_WAIT_S,
                compression=None,
            )
        except OSError as exc:
            from stream_agent.errors import StreamAgentError

            raise StreamAgentError(
                f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}; "
                "is another daemon running? choose another server.port"
            ) from exc
        auth = "with a token" if self._ctx.token else "without a token"
        log.info("listening on ws://%s:%d/ws and http (%s)", cfg.host, self.port, auth)

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop listening, let answers in flight finish for up to ``drain_s`` seconds (new
        questions get ``busy``), then close every connection with 1001 (going away); answers
        still running then are cancelled."""
        server = self._server
        if server is None:
            return
        self._ctx.state.draining = True
        server.server.close()  # stop listening; open connections stay for the drain
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while loop.time() < deadline and any(s.answers_in_flight for s in self._sessions):
            await asyncio.sleep(0.02)
        left = sum(s.answers_in_flight for s in self._sessions)
        if left:
            log.warning("closing with %d answers still in flight; they are cancelled", left)
        # every accepted question gets its terminal message before its connection closes
        await asyncio.gather(
            *(s.end_in_flight(END_IN_FLIGHT_S) for s in list(self._sessions)),
            return_exceptions=True,
        )
        server.close()
        try:
            # Closing waits for each client's close handshake; one that does not read holds
            # it up (its write buffer is full), so give up after a while and drop them all.
            async with asyncio.timeout(CLOSE_WAIT_S):
                await server.wait_closed()
        except TimeoutError:
            log.warning("dropping %d connections that did not close", len(self._sessions))
            for session in list(self._sessions):
                session.abort()
            await server.wait_closed()
        self._server = None
        log.info("server stopped")

    async def __aenter__(self) -> StreamAgentServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(self._ctx, ws)
        metrics = self._ctx.metrics
        if len(self._sessions) >= self._ctx.config.max_clients:
            metrics.ws_rejected.inc(reason="max_clients")
            log.warning("refused a client: %d clients are connected", len(self._sessions))
            await session.reject_busy()
            return
        self._sessions.add(session)
        metrics.ws_clients.set(len(self._sessions))
        log.info("client %d connected (%s)", session.number, _remote(ws))
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # a session bug ends that connection only, never the server
            log.exception("client %d: the session failed", session.number)
        finally:
            self._sessions.discard(session)
            metrics.ws_clients.set(len(self._sessions))
            log.info("client %d disconnected", session.number)


def _remote(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
