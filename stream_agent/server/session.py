"""One WebSocket connection: read messages, answer them, never let one bad message end it.

Outbound messages go through a bounded send queue drained by a writer task. A client that does
not read (its queue stays full for ``slow_client_timeout_s``) is disconnected rather than
buffered without bound. Every inbound message is size-checked, parsed (the parser never raises)
and dispatched inside a guard: a failure becomes an ``internal`` error message for that request,
and the connection lives on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from stream_agent.alerts.rules import Rule
from stream_agent.alerts.state import Lifecycle
from stream_agent.answers import AnswerDelta, AnswerFailed, AnswerFinal, Moment
from stream_agent.engine import (
    AnswerStream,
    EngineError,
    Question,
    question_received_now,
)
from stream_agent.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Answer,
    Ask,
    Auth,
    CameraInfo,
    Cancel,
    ClientMessage,
    Error,
    ErrorCode,
    EventPush,
    EventsQuery,
    EventsReply,
    Evidence,
    Hello,
    Invalid,
    RuleChangedPush,
    RuleCommand,
    RuleResult,
    ServerMessage,
    StatusQuery,
    StatusReply,
    Subscribe,
    Subscribed,
    Timings,
    Unsubscribe,
    Unsubscribed,
    encode,
    format_wall_time,
    parse_client_message,
)
from stream_agent.protocol import Delta as DeltaMessage
from stream_agent.server.auth import bearer_token, token_matches
from stream_agent.server.context import ServerContext

log = logging.getLogger(__name__)

MAX_AUTH_FAILURES: Final = 5
CLOSE_POLICY: Final = 1008
CLOSE_TRY_AGAIN: Final = 1013
EVENT_BEFORE_S: Final = 60.0
"""``ask`` with ``event``: the range starts this long before the event's start ..."""
EVENT_AFTER_S: Final = 10.0
"""... and ends this long after its end (or now, while it is open)."""


class _Closing(Exception):
    """The session is being closed; stop sending."""


class Session:
    """The server side of one client connection."""

    def __init__(self, ctx: ServerContext, ws: ServerConnection) -> None:
        self._ctx = ctx
        self._ws = ws
        self.number = ctx.state.next_session_number()
        cfg = ctx.config
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=cfg.send_queue_messages)
        self._authenticated = ctx.token is None
        self._auth_failures = 0
        self._closing = False
        self._in_flight: dict[str, AnswerStream] = {}
        self._pumps: set[asyncio.Task[None]] = set()
        self._pump_of: dict[str, asyncio.Task[None]] = {}
        self._peer = _peer(ws)
        self._close_task: asyncio.Task[None] | None = None
        # alert event subscriptions: id -> unsubscribe; pushes wait in one bounded queue
        self._subscriptions: dict[str, Callable[[], None]] = {}
        self._events: collections.deque[EventPush | RuleChangedPush] = collections.deque()
        self._events_ready = asyncio.Event()
        self._event_task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def answers_in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        """Serve the connection until the client leaves or is disconnected."""
        writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.number}")
        deadline: asyncio.Task[None] | None = None
        try:
            header_token = bearer_token(self._ws.request.headers) if self._ws.request else None
            if not self._authenticated and header_token is not None:
                self._authenticated = token_matches(self._ctx.token, header_token)
            await self._send(self._hello())
            if not self._authenticated:
                if header_token is not None:
                    self._auth_failures += 1
                    await self._error(
                        "unauthorized", "the token in the Authorization header is not valid"
                    )
                deadline = asyncio.create_task(self._auth_deadline())
            async for raw in self._ws:
                await self._on_message(raw)
        except (ConnectionClosed, _Closing):
            pass
        finally:
            if deadline is not None:
                deadline.cancel()
            for stream in self._in_flight.values():
                stream.cancel()
            for task in list(self._pumps):
                task.cancel()
            for unsubscribe in self._subscriptions.values():
                unsubscribe()
            self._subscriptions.clear()
            if self._event_task is not None:
                self._event_task.cancel()
                self._pumps.add(self._event_task)
            writer.cancel()
            await asyncio.gather(writer, *self._pumps, return_exceptions=True)

    async def reject_busy(self) -> None:
        """Tell a client over the connection cap why it is turned away, then close."""
        message = f"the server already has {self._ctx.config.max_clients} clients; try again later"
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(encode(Error("busy", message)))
            await self._ws.close(CLOSE_TRY_AGAIN, "too many clients")

    # --- sending -------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Send queued messages; a send that cannot finish in time marks a slow client."""
        timeout = self._ctx.config.slow_client_timeout_s
        with contextlib.suppress(ConnectionClosed):
            while True:
                text = await self._queue.get()
                try:
                    async with asyncio.timeout(timeout):
                        await self._ws.send(text)
                except TimeoutError:
                    await self._disconnect_slow()
                    return
                except ConnectionClosed:
                    raise
                except Exception:  # never die silently: later answers would vanish unsent
                    log.exception("client %s: a message could not be sent; closing", self.number)
                    self._closing = True
                    self._close_task = asyncio.create_task(self._close(1011, "server error"))
                    return
                finally:
                    self._queue.task_done()

    async def end_in_flight(self, grace_s: float) -> None:
        """Before the connection closes (shutdown, a policy close): cancel the answers in
        flight, give their own ``answer`` (finish_reason ``cancelled``) ``grace_s`` to come
        from the engine, send one for each still open, and let the send queue drain, so that
        every ``ack`` has its terminal message before the close frame."""
        for stream in self._in_flight.values():
            stream.cancel()
        pumps = [self._pump_of[i] for i in self._in_flight if i in self._pump_of]
        if pumps and grace_s > 0:
            await asyncio.wait(pumps, timeout=grace_s)
        for client_id, stream in list(self._in_flight.items()):
            task = self._pump_of.get(client_id)
            if task is None or task.done():
                continue  # its pump queued the terminal message (a pump ends right after it)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self._in_flight.get(client_id) is stream:
                del self._in_flight[client_id]
            with contextlib.suppress(_Closing, ConnectionClosed):
                await self._send(
                    Answer(
                        id=client_id,
                        text="",
                        evidence=(),
                        timings=Timings(ttft_ms=None, tokens_per_s=None, total_ms=0.0, tokens=0),
                        finish_reason="cancelled",
                    )
                )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(grace_s, 1.0)):
                await self._queue.join()

    def abort(self) -> None:
        """Drop the TCP connection at once (for a shutdown that a client holds up)."""
        if self._ws.transport is not None:
            self._ws.transport.abort()

    async def _send(self, message: ServerMessage) -> None:
        if self._closing:
            raise _Closing
        text = encode(message)
        try:
            self._queue.put_nowait(text)
            return
        except asyncio.QueueFull:
            pass
        try:
            async with asyncio.timeout(self._ctx.config.slow_client_timeout_s):
                await self._queue.put(text)
        except TimeoutError:
            await self._disconnect_slow()
            raise _Closing from None

    async def _error(
        self,
        code: ErrorCode,
        message: str,
        request_id: str | None = None,
        request_type: str | None = None,
    ) -> None:
        self._ctx.metrics.ws_errors.inc(code=code)
        await self._send(Error(code, message, request_id, request_type))

    async def _disconnect_slow(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._ctx.metrics.ws_slow_disconnects.inc()
        log.warning(
            "disconnecting client %s (%s): it did not take its messages for %.1f s",
            self.number,
            self._peer,
            self._ctx.config.slow_client_timeout_s,
        )
        for stream in self._in_flight.values():
            stream.cancel()
        self._close_task = asyncio.create_task(self._close(CLOSE_POLICY, "client too slow"))

    async def _close(self, code: int, reason: str) -> None:
        """Close with a reason if the client takes it within a second, else drop the TCP
        connection (a graceful close would wait for a client that does not read)."""
        try:
            async with asyncio.timeout(1.0):
                await self._ws.close(code, reason)
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            if self._ws.state is not State.CLOSED and self._ws.transport is not None:
                self._ws.transport.abort()

    # --- receiving -----------------------------------------------------------------------------

    async def _on_message(self, raw: str | bytes) -> None:
        request_id: str | None = None
        request_type: str | None = None
        try:
            size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
            limit = self._ctx.config.max_message_bytes
            if size > limit:
                await self._error(
                    "bad_request", f"the message has {size} bytes; the limit is {limit}"
                )
                return
            message = parse_client_message(raw)
            if isinstance(message, Invalid):
                await self._error(message.code, message.message, message.id, message.request_type)
                return
            request_id = getattr(message, "id", None)
            request_type = _type_of(message)
            await self._dispatch(message)
        except (_Closing, ConnectionClosed):
            raise
        except Exception:
            log.exception("client %s: handling a %s message failed", self.number, request_type)
            await self._error(
                "internal",
                "the server failed to handle this message; the error is in its log",
                request_id,
                request_type,
            )

    async def _dispatch(self, message: ClientMessage) -> None:
        if isinstance(message, Auth):
            await self._on_auth(message)
            return
        if not self._authenticated:
            await self._error(
                "unauthorized",
                'authenticate first: send {"type": "auth", "token": ...} or connect with '
                "an 'Authorization: Bearer <token>' header",
                getattr(message, "id", None),
                _type_of(message),
            )
            return
        if isinstance(message, Ask):
            await self._on_ask(message)
        elif isinstance(message, Cancel):
            await self._on_cancel(message)
        elif isinstance(message, StatusQuery):
            await self._on_status(message)
        elif isinstance(message, RuleCommand | Subscribe | Unsubscribe | EventsQuery):
            await self._on_alerts(message)

    async def _on_auth(self, message: Auth) -> None:
        if self._authenticated and self._ctx.token is None:
            await self._send(self._hello())
            return
        if token_matches(self._ctx.token, message.token):
            self._authenticated = True
            log.info("client %s (%s) authenticated", self.number, self._peer)
            await self._send(self._hello())
            return
        self._auth_failures += 1
        await self._error("unauthorized", "the token is not valid", message.id, "auth")
        if self._auth_failures >= MAX_AUTH_FAILURES:
            log.warning("closing client %s (%s): too many failed logins", self.number, self._peer)
            await self.end_in_flight(0.0)
            self._closing = True
            await self._close(CLOSE_POLICY, "too many failed authentications")
            raise _Closing

    async def _auth_deadline(self) -> None:
        await asyncio.sleep(self._ctx.config.auth_timeout_s)
        if not self._authenticated and not self._closing:
            log.info("closing client %s (%s): it did not authenticate", self.number, self._peer)
            self._closing = True
            await self._close(CLOSE_POLICY, "authentication timed out")

    async def _on_ask(self, ask: Ask) -> None:
        cfg = self._ctx.config
        if self._ctx.state.draining:
            await self._error(
                "busy", "the server is shutting down; ask again when it is back", ask.id, "ask"
            )
            return
        if ask.id in self._in_flight:
            await self._error(
                "bad_request",
                f"id {ask.id!r} is already used by a question in flight",
                ask.id,
                "ask",
            )
            return
        if len(self._in_flight) >= cfg.max_questions_in_flight:
            await self._error(
                "busy",
                f"this connection already has {cfg.max_questions_in_flight} questions in flight; "
                "wait for an answer or cancel one",
                ask.id,
                "ask",
            )
            return
        if ask.camera is not None and ask.camera not in self._ctx.cameras:
            names = ", ".join(self._ctx.cameras.names) or "(none)"
            await self._error(
                "unknown_camera",
                f"there is no camera named {ask.camera!r}; cameras: {names}",
                ask.id,
                "ask",
            )
            return
        now = time.time()
        since = ask.since.resolve(now) if ask.since is not None else None
        until = ask.until.resolve(now) if ask.until is not None else None
        if ask.event is not None:
            found = await self._event_range(ask)
            if found is None:
                return
            camera, event_since, event_until = found
            ask = Ask(ask.id, ask.question, ask.camera or camera, ask.since, ask.until, ask.event)
            since = event_since if since is None else since
            until = event_until if until is None else until
        if since is not None and until is not None and since > until:
            await self._error(
                "bad_request", "'since' lies after 'until'; the time range is empty", ask.id, "ask"
            )
            return
        question = Question(
            request_id=f"{self.number}:{ask.id}",
            text=ask.question,
            camera=ask.camera,
            since=since,
            until=until,
            received_at=question_received_now(),
        )
        try:
            stream = self._ctx.engine.ask(question)
        except EngineError as exc:
            await self._error("busy" if exc.code == "busy" else "internal", str(exc), ask.id, "ask")
            return
        self._in_flight[ask.id] = stream
        try:
            await self._send(
                Ack(
                    id=ask.id,
                    camera=ask.camera,
                    since=None if since is None else format_wall_time(since),
                    until=None if until is None else format_wall_time(until),
                )
            )
        except BaseException:
            stream.cancel()
            self._in_flight.pop(ask.id, None)
            raise
        task = asyncio.create_task(self._pump(ask.id, stream), name=f"ws-answer-{self.number}")
        self._pumps.add(task)
        self._pump_of[ask.id] = task
        task.add_done_callback(self._pumps.discard)

    async def _pump(self, client_id: str, stream: AnswerStream) -> None:
        """Forward one answer's events to the client."""
        seq = 0
        try:
            async for event in stream:
                if isinstance(event, AnswerDelta):
                    await self._send(DeltaMessage(client_id, seq, event.text))
                    seq += 1
                elif isinstance(event, AnswerFinal):
                    await self._send(self._answer(client_id, event))
                elif isinstance(event, AnswerFailed):
                    await self._error(event.code, event.message, client_id, "ask")
        except (_Closing, ConnectionClosed):
            pass
        except Exception:
            log.exception("client %s: forwarding answer %r failed", self.number, client_id)
            with contextlib.suppress(_Closing, ConnectionClosed):
                await self._error("internal", "the answer could not be delivered", client_id, "ask")
        finally:
            if not stream.finished:
                stream.cancel()
            if self._in_flight.get(client_id) is stream:
                self._in_flight.pop(client_id, None)
            if self._pump_of.get(client_id) is asyncio.current_task():
                self._pump_of.pop(client_id, None)

    async def _event_range(self, ask: Ask) -> tuple[str, float, float | None] | None:
        """(camera, since, until) of the event ``ask.event`` names, or None after an error."""
        alerts = self._ctx.alerts
        stored = None
        if alerts is not None and ask.event is not None:
            stored = await asyncio.to_thread(alerts.history.get, ask.event)
        if stored is None:
            await self._error(
                "unknown_event", f"there is no alert event with id {ask.event!r}", ask.id, "ask"
            )
            return None
        record = stored.record
        until = None if record.end_time is None else record.end_time + EVENT_AFTER_S
        return record.camera, record.start_time - EVENT_BEFORE_S, until

    # --- alerts ----------------------------------------------------------------------------------

    async def _on_alerts(
        self, message: RuleCommand | Subscribe | Unsubscribe | EventsQuery
    ) -> None:
        kind = _type_of(message)
        alerts = self._ctx.alerts
        if alerts is None:
            await self._error("bad_request", "this server runs no alerts", message.id, kind)
            return
        if isinstance(message, RuleCommand):
            command = {k: v for k, v in message.command.items() if k != "id"}
            reply = alerts.commands.handle({**command, "id": message.id}, trusted=True)
            await self._send(RuleResult(message.id, reply))
        elif isinstance(message, EventsQuery):
            since = None if message.since is None else message.since.resolve(time.time())
            stored = await asyncio.to_thread(
                alerts.history.list_events,
                camera=message.camera,
                rule=message.rule,
                since=since,
                limit=message.limit,
            )
            await self._send(EventsReply(message.id, tuple(e.to_json() for e in stored)))
        elif isinstance(message, Subscribe):
            await self._on_subscribe(message)
        else:
            unsubscribe = self._subscriptions.pop(message.id, None)
            if unsubscribe is None:
                await self._error(
                    "bad_request",
                    f"no subscription with id {message.id!r}",
                    message.id,
                    "unsubscribe",
                )
                return
            unsubscribe()
            await self._send(Unsubscribed(message.id))

    async def _on_subscribe(self, sub: Subscribe) -> None:
        alerts = self._ctx.alerts
        assert alerts is not None
        cfg = self._ctx.config
        if sub.id in self._subscriptions:
            await self._error(
                "bad_request", f"subscription id {sub.id!r} is already in use", sub.id, "subscribe"
            )
            return
        if len(self._subscriptions) >= cfg.max_subscriptions:
            await self._error(
                "busy",
                f"this connection already has {cfg.max_subscriptions} subscriptions",
                sub.id,
                "subscribe",
            )
            return
        if sub.camera is not None and sub.camera not in alerts.camera_names:
            names = ", ".join(alerts.camera_names) or "(none)"
            await self._error(
                "unknown_camera",
                f"there is no camera named {sub.camera!r}; cameras: {names}",
                sub.id,
                "subscribe",
            )
            return
        if self._event_task is None:
            self._event_task = asyncio.create_task(
                self._event_loop(), name=f"ws-events-{self.number}"
            )
        sub_id = sub.id

        def on_event(lc: Lifecycle) -> None:
            self._push_event(EventPush(sub_id, alerts.event_message(lc)))

        def on_rule(kind: str, rule: Rule) -> None:
            self._push_event(RuleChangedPush(sub_id, kind, rule.to_json()))

        self._subscriptions[sub_id] = alerts.subscribe(
            on_event, camera=sub.camera, rule=sub.rule, on_rule=on_rule
        )
        await self._send(Subscribed(sub_id))

    def _push_event(self, push: EventPush | RuleChangedPush) -> None:
        """Called by the alert service on the loop: queue, dropping the oldest when full."""
        if push.id not in self._subscriptions or self._closing:
            return
        if len(self._events) >= self._ctx.config.event_queue_messages:
            self._events.popleft()
            self._ctx.metrics.ws_event_drops.inc()
        self._events.append(push)
        self._events_ready.set()

    async def _event_loop(self) -> None:
        with contextlib.suppress(_Closing, ConnectionClosed):
            while True:
                await self._events_ready.wait()
                self._events_ready.clear()
                while self._events:
                    push = self._events.popleft()
                    if push.id in self._subscriptions:
                        await self._send(push)

    async def _on_cancel(self, cancel: Cancel) -> None:
        stream = self._in_flight.get(cancel.id)
        if stream is None:
            await self._error(
                "bad_request",
                f"no question with id {cancel.id!r} is in flight",
                cancel.id,
                "cancel",
            )
            return
        stream.cancel()  # the answer ends with its own 'answer' message, finish_reason cancelled

    async def _on_status(self, query: StatusQuery) -> None:
        status = self._ctx.engine.snapshot()
        ready, reason = self._ctx.readiness()
        await self._send(
            StatusReply(
                id=query.id,
                model=self._ctx.model(),
                ready=ready,
                reason=reason,
                cameras=self._camera_infos(with_memory=True),
                queued_frames=status.queued_frames,
                queued_questions=status.queued_questions,
                alerts=self._ctx.alerts_status(),
            )
        )

    # --- building messages ---------------------------------------------------------------------

    def _hello(self) -> Hello:
        authed = self._authenticated
        return Hello(
            protocol=PROTOCOL_VERSION,
            server=f"stream-agent {self._ctx.version}",
            model=self._ctx.model() if authed else None,
            cameras=self._camera_infos(with_memory=False) if authed else (),
            auth_required=not authed,
            max_message_bytes=self._ctx.config.max_message_bytes,
            max_questions_in_flight=self._ctx.config.max_questions_in_flight,
        )

    def _camera_infos(self, *, with_memory: bool) -> tuple[CameraInfo, ...]:
        status = self._ctx.engine.snapshot() if with_memory else None
        placement_of = getattr(self._ctx.engine, "placement", None)  # Ray placement only
        placed = {p.camera: (p.engine, p.node) for p in placement_of()} if placement_of else {}
        infos = []
        for view in self._ctx.cameras.views():
            memory = status.worker.camera(view.name) if status is not None else None
            dropped = view.dropped + (status.frames_dropped.get(view.name, 0) if status else 0)
            infos.append(
                CameraInfo(
                    name=view.name,
                    state=view.state,
                    reason=view.reason,
                    last_frame_time=(
                        None
                        if view.last_frame_wall is None
                        else format_wall_time(view.last_frame_wall)
                    ),
                    frames_dropped=dropped,
                    memory_blocks=None if memory is None else memory.blocks,
                    memory_ram_bytes=None if memory is None else memory.ram_bytes,
                    memory_disk_bytes=None if memory is None else memory.disk_bytes,
                    memory_start_time=_wall(memory.oldest_wall if memory else None),
                    memory_end_time=_wall(memory.last_wall if memory else None),
                    cacher_reuse_share=None if memory is None else memory.cacher_reuse_share,
                    pruner_kept_share=None if memory is None else memory.pruner_kept_share,
                    lag_s=None if status is None else status.frame_lag_s.get(view.name),
                    placement=placed.get(view.name) if status is not None else None,
                )
            )
        return tuple(infos)

    def _answer(self, client_id: str, final: AnswerFinal) -> Answer:
        t = final.timings
        return Answer(
            id=client_id,
            text=final.text,
            evidence=tuple(self._evidence(m) for m in final.evidence),
            timings=Timings(
                ttft_ms=_ms(t.ttft_s),
                tokens_per_s=t.tokens_per_s,
                total_ms=t.total_s * 1000.0,
                tokens=final.tokens,
                queue_ms=_ms(t.queue_s),
                retrieval_ms=_ms(t.retrieval_s),
                context_tokens=t.context_tokens,
                blocks_loaded=t.blocks_loaded,
                disk_reads=t.disk_reads,
            ),
            finish_reason=final.finish_reason,
            notes=final.notes,
        )

    def _evidence(self, moment: Moment) -> Evidence:
        url = None
        keeps = self._ctx.frames is not None or self._ctx.cameras.keeps_evidence
        if keeps and moment.camera in self._ctx.cameras:
            middle = (moment.start_wall + moment.end_wall) / 2.0
            url = f"/cameras/{moment.camera}/frame.jpg?at={middle:.3f}"
        return Evidence(
            camera=moment.camera,
            start_s=moment.start_pts,
            end_s=moment.end_pts,
            start_time=format_wall_time(moment.start_wall),
            end_time=format_wall_time(moment.end_wall),
            score=moment.score,
            frame_url=url,
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _wall(seconds: float | None) -> str | None:
    return None if seconds is None else format_wall_time(seconds)


def _type_of(message: ClientMessage) -> str:
    return {
        Ask: "ask",
        Cancel: "cancel",
        StatusQuery: "status",
        Auth: "auth",
        RuleCommand: "rule",
        Subscribe: "subscribe",
        Unsubscribe: "unsubscribe",
        EventsQuery: "events",
    }[type(message)]


def _peer(ws: ServerConnection) -> str:
    try:
        address = ws.remote_address
    except Exception:
        return "?"
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
