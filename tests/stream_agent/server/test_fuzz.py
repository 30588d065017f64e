"""Property-based: random messages at a live server, then a normal question still works.

The server runs on its own event loop in a background thread (hypothesis drives a synchronous
test); the client is websockets' synchronous client, one connection for all examples, so the
test also shows that no message closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from stream_agent.protocol import Answer, Error, StatusReply, parse_server_message
from tests.stream_agent.server.harness import running_server


class ServerThread:
    """``running_server()`` on a private loop in a daemon thread."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_server(**self._settings) as h:
            await h.feed("dock", 3)
            self.url = h.url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(20), "the server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


@pytest.fixture(scope="module")
def client() -> Iterator[ClientConnection]:
    with ServerThread(max_message_bytes=4096) as server, connect(server.url) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "hello"
        yield ws


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
messages = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=100),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["ask", "cancel", "status", "auth", "subscribe", ""])},
        optional={
            "id": st.text(max_size=12) | json_scalars,
            "question": st.text(max_size=40) | json_scalars,
            "camera": st.sampled_from(["dock", "door", "attic"]) | json_scalars,
            "since": st.sampled_from(["10m", "now", "1s", "2999-01-01T00:00:00Z", "x"]),
            "until": st.sampled_from(["5m", "now", "2000-01-01T00:00:00Z"]) | json_scalars,
            "token": json_scalars,
            "extra": json_scalars,
        },
    ).map(json.dumps),
    st.integers(4097, 6000).map(lambda n: "x" * n),  # over max_message_bytes
)

_sync_counter = iter(range(10**9))


def _sync(ws: ClientConnection) -> None:
    """Send a status request and read (and validate) everything up to its reply."""
    marker = f"sync-{next(_sync_counter)}"
    ws.send(json.dumps({"type": "status", "id": marker}))
    while True:
        message = parse_server_message(ws.recv(timeout=10))  # raises if not a valid message
        if isinstance(message, StatusReply) and message.id == marker:
            return


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(messages, min_size=1, max_size=4))
def test_random_messages_never_break_the_connection(
    client: ClientConnection, batch: list[str | bytes]
) -> None:
    for raw in batch:
        client.send(raw)
    _sync(client)


def test_after_the_storm_a_normal_question_is_answered(client: ClientConnection) -> None:
    _sync(client)
    client.send(json.dumps({"type": "ask", "id": "final-q", "question": "What happened?"}))
    while True:
        message = parse_server_message(client.recv(timeout=10))
        if getattr(message, "id", None) != "final-q":
            continue
        assert not isinstance(message, Error), message
        if isinstance(message, Answer):
            assert message.finish_reason == "stop"
            assert message.text.startswith("Seen 3 moments.")
            assert len(message.evidence) == 3
            return
