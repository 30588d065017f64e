"""A thin shell around aiomqtt 2.x: one connection, kept up, that never blocks its callers.

:class:`MqttLink` connects with the configured credentials, TLS and a stable client id, sets a
last will (``offline``, retained, on ``PREFIX/available``), publishes ``online`` retained on
every connect and ``offline`` on a clean stop, and subscribes to the command topic and Home
Assistant's status topic. aiomqtt 2 does not reconnect by itself, so :meth:`MqttLink.run` loops
with capped, jittered exponential backoff. Callers never wait for the broker:

* :meth:`publish_event` appends to the on-disk :class:`~stream_agent.alerts.outbox.Outbox`,
  delivered in order with QoS 1 (deleted only on PUBACK);
* :meth:`set_retained` records the latest payload of a retained topic (states, snapshots,
  discovery); all of them are published again on every connect and when Home Assistant comes
  back ``online``, and ``None`` clears a topic (an empty retained message);
* :meth:`publish` queues a transient message (stats, command replies) in a bounded queue;
  while disconnected these are dropped, counted.

The connection state (``connecting``, ``online``, ``offline``, ``refused``) is a property for
readiness and metrics, and each change is logged once. Credentials are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import aiomqtt

from ingest.backoff import Backoff
from ingest.options import BackoffPolicy
from stream_agent.alerts.config import MqttConfig, MqttSecrets
from stream_agent.alerts.outbox import Outbox, OutMessage
from stream_agent.alerts.topics import Topics

log = logging.getLogger(__name__)

LinkState = Literal["connecting", "online", "offline", "refused", "stopped"]
REFUSED_CODES = frozenset({4, 5, 134, 135})
"""CONNACK codes of refused credentials or authorisation (MQTT 3.1.1 and 5)."""
PUBLISH_TIMEOUT_S = 10.0
TRANSIENT_MAX = 256
OUTBOX_BATCH = 32


class _Stop(Exception):
    pass


@dataclass(frozen=True, slots=True)
class LinkStatus:
    state: LinkState
    reason: str
    since: float
    connects: int
    outbox: int
    outbox_dropped: int
    transient_dropped: int
    delivered: int

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "reason": self.reason,
            "since": self.since,
            "connects": self.connects,
            "outbox": self.outbox,
            "outbox_dropped": self.outbox_dropped,
            "transient_dropped": self.transient_dropped,
            "delivered": self.delivered,
        }


def _rc_value(exc: aiomqtt.MqttCodeError) -> int | None:
    rc = exc.rc
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


class MqttLink:
    """One MQTT connection, kept up by :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        config: MqttConfig,
        outbox: Outbox,
        *,
        secrets: MqttSecrets | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._secrets = secrets or MqttSecrets()
        self._outbox = outbox
        self._on_message = on_message
        self._on_connect = on_connect
        self.topics = Topics(config.prefix, config.discovery_prefix)
        b = config.backoff
        self._backoff = Backoff(
            BackoffPolicy(
                initial_s=b.initial_s,
                max_s=max(b.max_s, b.initial_s),
                multiplier=b.multiplier,
                jitter=min(b.jitter, 0.99),
            ),
            rng,
        )
        self._retained: dict[str, tuple[bytes | None, int]] = {}
        self._dirty: dict[str, None] = {}
        self._transient: deque[OutMessage] = deque()
        self._transient_dropped = 0
        self._delivered = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._state: LinkState = "connecting"
        self._reason = "not connected yet"
        self._since = time.time()
        self._connects = 0

    # --- what callers use (never block) ------------------------------------------------------

    def publish_event(self, topic: str, payload: bytes) -> None:
        """Queue a message that must arrive (QoS 1, in order, survives restarts)."""
        self._outbox.push(OutMessage(topic, payload, qos=1, retain=False))
        self._wake.set()

    def set_retained(self, topic: str, payload: bytes | None, qos: int = 1) -> None:
        """The latest retained payload of ``topic`` (None: clear the topic on the broker)."""
        if self._retained.get(topic) == (payload, qos):
            return
        self._retained[topic] = (payload, qos)
        self._dirty[topic] = None
        self._wake.set()

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """A transient message; dropped (counted) while offline or when the queue is full."""
        if self._state != "online" or len(self._transient) >= TRANSIENT_MAX:
            self._transient_dropped += 1
            return
        self._transient.append(OutMessage(topic, payload, qos=qos, retain=False))
        self._wake.set()

    def republish_retained(self) -> None:
        """Publish every retained topic again (Home Assistant restarted)."""
        for topic in self._retained:
            self._dirty[topic] = None
        self._wake.set()

    def set_message_handler(self, handler: Callable[[str, bytes], None]) -> None:
        """Who receives the messages of the command topic (before :meth:`run`)."""
        self._on_message = handler

    @property
    def state(self) -> LinkState:
        return self._state

    def status(self) -> LinkStatus:
        return LinkStatus(
            state=self._state,
            reason=self._reason,
            since=self._since,
            connects=self._connects,
            outbox=len(self._outbox),
            outbox_dropped=self._outbox.dropped,
            transient_dropped=self._transient_dropped,
            delivered=self._delivered,
        )

    # --- the connection loop -----------------------------------------------------------------

    def _set_state(self, state: LinkState, reason: str) -> None:
        if state == self._state and reason == self._reason:
            return
        changed = state != self._state
        self._state, self._reason, self._since = state, reason, time.time()
        if changed:
            where = f"{self._config.host}:{self._config.port}"
            level = logging.INFO if state in ("online", "stopped") else logging.WARNING
            log.log(level, "MQTT %s (%s): %s", state, where, reason)

    def _client(self) -> aiomqtt.Client:
        c = self._config
        tls_params = None
        if c.tls is not None:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=None if c.tls.ca_file is None else str(c.tls.ca_file),
                certfile=None if c.tls.cert_file is None else str(c.tls.cert_file),
                keyfile=None if c.tls.key_file is None else str(c.tls.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
        return aiomqtt.Client(
            c.host,
            c.port,
            username=c.username,
            password=self._secrets.password,
            identifier=c.effective_client_id,
            will=aiomqtt.Will(self.topics.available, b"offline", qos=1, retain=True),
            keepalive=c.keepalive_s,
            timeout=PUBLISH_TIMEOUT_S,
            tls_params=tls_params,
            tls_insecure=None if c.tls is None else c.tls.insecure,
            max_queued_incoming_messages=1000,
            logger=logging.getLogger(f"{__name__}.aiomqtt"),
        )

    async def run(self) -> None:
        """Connect, serve, reconnect after failures; returns after :meth:`stop`."""
        while not self._stopping.is_set():
            self._set_state("connecting" if self._connects == 0 else self._state, self._reason)
            try:
                await self._session()
            except _Stop:
                break
            except aiomqtt.MqttCodeError as exc:
                if _rc_value(exc) in REFUSED_CODES:
                    self._set_state("refused", f"the broker refused the connection: {exc}")
                else:
                    self._set_state("offline", str(exc) or type(exc).__name__)
            except (aiomqtt.MqttError, OSError) as exc:
                self._set_state("offline", str(exc) or type(exc).__name__)
            except Exception as exc:  # a bug must not end the link: log it, reconnect
                log.exception("MQTT session failed unexpectedly")
                self._set_state("offline", f"internal error: {type(exc).__name__}")
            if self._stopping.is_set():
                break
            delay = self._backoff.next_delay()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        self._set_state("stopped", "stopped")

    async def stop(self) -> None:
        """Ask :meth:`run` to publish ``offline``, disconnect cleanly and return."""
        self._stopping.set()

    async def _session(self) -> None:
        client = self._client()
        async with client:
            t = self.topics
            await client.publish(t.available, b"online", qos=1, retain=True)
            await client.subscribe(t.command, qos=1)
            await client.subscribe(t.ha_status, qos=1)
            self._connects += 1
            self._backoff.reset()
            self._set_state("online", "connected")
            self.republish_retained()
            if self._on_connect is not None:
                try:
                    self._on_connect()
                except Exception:
                    log.exception("MQTT on_connect callback failed")
            tasks = {
                asyncio.create_task(self._receive(client)),
                asyncio.create_task(self._send(client)),
                asyncio.create_task(self._stopping.wait()),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
            # stop() was called: say goodbye; leaving the context disconnects cleanly.
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(t.available, b"offline", qos=1, retain=True, timeout=3)
        raise _Stop

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload
            data = payload if isinstance(payload, bytes) else str(payload or "").encode()
            if topic == self.topics.ha_status:
                if data.strip() == b"online":
                    log.info("Home Assistant is online: discovery and states published again")
                    self.republish_retained()
                continue
            if self._on_message is not None:
                try:
                    self._on_message(topic, data)
                except Exception:
                    log.exception("MQTT message handler failed on %s", topic)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                # unmark first: a newer value set while this one is on its way marks it again
                # (after a failure, the next connect publishes every retained topic anyway)
                topic = next(iter(self._dirty))
                del self._dirty[topic]
                payload, qos = self._retained[topic]
                await client.publish(topic, payload or b"", qos=qos, retain=True)
                if payload is None and topic not in self._dirty:
                    self._retained.pop(topic, None)
            while self._transient:
                message = self._transient[0]
                await client.publish(message.topic, message.payload, qos=message.qos)
                self._transient.popleft()
            while True:
                batch = self._outbox.peek(OUTBOX_BATCH)
                if not batch:
                    break
                for seq, message in batch:
                    await client.publish(message.topic, message.payload, qos=message.qos)
                    self._outbox.ack(seq)
                    self._delivered += 1
                if self._dirty or self._transient:
                    self._wake.set()
                    break
