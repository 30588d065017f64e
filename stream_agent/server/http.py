"""The plain-HTTP side of the port, answered from ``process_request`` before any handshake.

Routes (GET and HEAD only):

========================================  =====  ==================================================
``/healthz``                              open   200 ``ok``: the process is alive
``/readyz``                               open   200 ``ready`` or 503 with the reason
``/metrics``                              token  Prometheus text format
``/cameras/NAME/snapshot.jpg``            token  the camera's newest frame (full size)
``/cameras/NAME/frame.jpg?at=UNIX_S``     token  the kept frame nearest that wall time (evidence)
``/events?camera=&rule=&since=&limit=``   token  alert events (JSON), oldest first
``/events/ID/snapshot.jpg``               token  an alert event's snapshot
``/ws``                                   (*)    the WebSocket endpoint (authenticates in-band)
anything else                             open   a file of the web client's folder, or 404
========================================  =====  ==================================================

"token" means ``Authorization: Bearer <token>`` when the server has a token; without one, 401.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
import math
import re
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from stream_agent.alerts.history import EventQuery, InvalidQuery
from stream_agent.protocol import format_wall_time
from stream_agent.server.auth import bearer_token, token_matches
from stream_agent.server.context import ServerContext
from stream_agent.server.static import content_type, resolve_static

log = logging.getLogger(__name__)

WS_PATH = "/ws"
_CAMERA_ROUTE = re.compile(r"^/cameras/([A-Za-z0-9][A-Za-z0-9_-]{0,62})/(snapshot|frame)\.jpg$")
_EVENT_SNAPSHOT = re.compile(r"^/events/([A-Za-z0-9][A-Za-z0-9._-]{0,199})/snapshot\.jpg$")


def response(
    status: http.HTTPStatus,
    body: bytes | str = b"",
    *,
    kind: str = "text/plain; charset=utf-8",
    extra: Iterable[tuple[str, str]] = (),
) -> Response:
    """An HTTP response with the usual headers; the connection closes after it."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", kind),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, data)


def is_websocket_upgrade(request: Request) -> bool:
    upgrade = request.headers.get("Upgrade", "")
    return upgrade.lower() == "websocket"


class HttpRoutes:
    """``process_request`` for the server: answers HTTP, lets ``/ws`` handshakes through."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        route = "other"
        try:
            route, result = await self._route(request)
        except Exception:
            log.exception("HTTP request %s failed", request.path[:200])
            result = response(
                http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the server log\n"
            )
        if result is not None:
            self._ctx.metrics.http_requests.inc(route=route, status=str(result.status_code))
            if request.method == "HEAD":
                result.body = b""
        return result

    async def _route(self, request: Request) -> tuple[str, Response | None]:
        parts = urlsplit(request.path)
        path = parts.path
        if path == WS_PATH:
            return "ws", self._websocket(request)
        if request.method not in ("GET", "HEAD"):
            return "other", response(
                http.HTTPStatus.METHOD_NOT_ALLOWED,
                "only GET and HEAD are served here\n",
                extra=[("Allow", "GET, HEAD")],
            )
        if path == "/healthz":
            return "healthz", response(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            ready, reason = self._ctx.readiness()
            alerts = self._ctx.alerts
            if alerts is not None:  # detail only: readiness never depends on the broker
                state, why = alerts.mqtt_state()
                reason += f"; mqtt {state}" + (f" ({why})" if why and state != "online" else "")
            if ready:
                return "readyz", response(http.HTTPStatus.OK, f"ready: {reason}\n")
            return "readyz", response(http.HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}\n")
        if path == "/metrics":
            denied = self._check_token(request)
            if denied is not None:
                return "metrics", denied
            body, kind = self._ctx.metrics.registry.exposition(request.headers.get("Accept", ""))
            return "metrics", response(http.HTTPStatus.OK, body, kind=kind)
        camera_route = _CAMERA_ROUTE.match(path)
        if camera_route is not None or path.startswith("/cameras/"):
            denied = self._check_token(request)
            if denied is not None:
                return "camera", denied
            if camera_route is None or camera_route.group(1) not in self._ctx.cameras:
                return "camera", response(http.HTTPStatus.NOT_FOUND, "no such camera\n")
            name, what = camera_route.group(1), camera_route.group(2)
            if what == "snapshot":
                return "snapshot", await self._snapshot(name)
            return "frame", await self._evidence_frame(name, parse_qs(parts.query))
        if path == "/events" or path.startswith("/events/"):
            denied = self._check_token(request)
            if denied is not None:
                return "events", denied
            if path == "/events":
                return "events", await self._events(parts.query)
            return "event_snapshot", await self._event_snapshot(path)
        if is_websocket_upgrade(request):
            return "ws", response(
                http.HTTPStatus.NOT_FOUND, f"the WebSocket endpoint is {WS_PATH}\n"
            )
        return "static", await self._static(path)

    # --- routes --------------------------------------------------------------------------------

    def _websocket(self, request: Request) -> Response | None:
        if request.method != "GET":
            return response(
                http.HTTPStatus.METHOD_NOT_ALLOWED,
                "the WebSocket endpoint takes GET with an Upgrade header\n",
                extra=[("Allow", "GET")],
            )
        if not is_websocket_upgrade(request):
            return response(
                http.HTTPStatus.UPGRADE_REQUIRED,
                "this is the WebSocket endpoint; connect with a WebSocket client\n",
                extra=[("Upgrade", "websocket")],
            )
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, request.headers.get("Host")):
            self._ctx.metrics.ws_rejected.inc(reason="origin")
            log.warning("refused a WebSocket connection from origin %s", origin[:200])
            return response(
                http.HTTPStatus.FORBIDDEN,
                "this origin may not connect; add it to server.allowed_origins\n",
            )
        return None  # go on with the handshake; the session authenticates

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        if origin in self._ctx.config.allowed_origins:
            return True
        if host is None:
            return False
        return origin in (f"http://{host}", f"https://{host}")

    def _check_token(self, request: Request) -> Response | None:
        if token_matches(self._ctx.token, bearer_token(request.headers)):
            return None
        return response(
            http.HTTPStatus.UNAUTHORIZED,
            "a valid 'Authorization: Bearer <token>' header is required\n",
            extra=[("WWW-Authenticate", 'Bearer realm="stream-agent"')],
        )

    async def _snapshot(self, name: str) -> Response:
        result = await asyncio.to_thread(self._ctx.cameras.snapshot_jpeg, name)
        if result is None:
            return response(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"camera {name} has not delivered a frame yet\n",
                extra=[("Retry-After", "1")],
            )
        frame, jpeg = result
        return response(
            http.HTTPStatus.OK,
            jpeg,
            kind="image/jpeg",
            extra=_frame_headers(frame.pts, frame.wall_time),
        )

    async def _evidence_frame(self, name: str, query: dict[str, list[str]]) -> Response:
        values = query.get("at", [])
        try:
            at = float(values[0]) if len(values) == 1 else math.nan
        except ValueError:
            at = math.nan
        if not math.isfinite(at):
            return response(
                http.HTTPStatus.BAD_REQUEST,
                "give the moment as ?at=<Unix seconds>, e.g. ?at=1714564800.5\n",
            )
        # the memory's frames first (on disk, one per stored block, kept across restarts),
        # then the frames the camera board holds in RAM (the newest ones, not yet stored)
        frames = self._ctx.frames
        stored = None if frames is None else await asyncio.to_thread(frames.nearest, name, at)
        if stored is not None:
            return response(
                http.HTTPStatus.OK,
                stored.jpeg,
                kind="image/jpeg",
                extra=_frame_headers(stored.pts, stored.wall),
            )
        kept = self._ctx.cameras.frame_at(name, at)
        if kept is None:
            return response(
                http.HTTPStatus.NOT_FOUND,
                f"no frame of camera {name} is kept near that moment\n",
            )
        return response(
            http.HTTPStatus.OK,
            kept.jpeg,
            kind="image/jpeg",
            extra=_frame_headers(kept.pts, kept.wall_time),
        )

    async def _events(self, query: str) -> Response:
        alerts = self._ctx.alerts
        if alerts is None:
            return response(http.HTTPStatus.NOT_FOUND, "this server runs no alerts\n")
        params = parse_qs(query, keep_blank_values=True)
        repeated = sorted(k for k, v in params.items() if len(v) > 1)
        if repeated:
            return response(
                http.HTTPStatus.BAD_REQUEST, f"parameter {repeated[0]!r} is given twice\n"
            )
        try:
            q = EventQuery.parse({k: v[0] for k, v in params.items()})
        except InvalidQuery as exc:
            return response(http.HTTPStatus.BAD_REQUEST, f"{exc}\n")
        stored = await asyncio.to_thread(alerts.history.query, q)
        body = json.dumps({"events": [e.to_json() for e in stored]}, ensure_ascii=False)
        return response(http.HTTPStatus.OK, body, kind="application/json")

    async def _event_snapshot(self, path: str) -> Response:
        alerts = self._ctx.alerts
        match = _EVENT_SNAPSHOT.match(path)
        if alerts is None or match is None:
            return response(http.HTTPStatus.NOT_FOUND, "no such event\n")
        jpeg = await asyncio.to_thread(alerts.snapshot, match.group(1))
        if jpeg is None:
            return response(http.HTTPStatus.NOT_FOUND, "no snapshot of that event\n")
        return response(http.HTTPStatus.OK, jpeg, kind="image/jpeg")

    async def _static(self, path: str) -> Response:
        root = self._ctx.web_root
        found = None if root is None else resolve_static(root, path)
        if found is None:
            return response(http.HTTPStatus.NOT_FOUND, "not found\n")
        data = await asyncio.to_thread(found.read_bytes)
        return response(http.HTTPStatus.OK, data, kind=content_type(found))


def _frame_headers(pts: float, wall_time: float) -> list[tuple[str, str]]:
    return [("X-Frame-Pts", f"{pts:.3f}"), ("X-Frame-Time", format_wall_time(wall_time))]
