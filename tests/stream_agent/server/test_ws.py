"""The WebSocket protocol against a real loopback server with real websockets clients."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
import urllib.request
from typing import Any

import pytest
from PIL import Image
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.uri import parse_uri

from stream_agent.cameras import CameraBoard, CameraView
from stream_agent.protocol import PROTOCOL_VERSION, parse_wall_time
from tests.stream_agent.engine.fake_worker import MODEL_NAME, FakeWorker
from tests.stream_agent.server.harness import (
    running_server,
)
from tests.support.ws import ask, recv, send, until_terminal


async def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_hello_names_the_protocol_cameras_and_model() -> None:
    async with running_server() as h, h.connect() as ws:
        hello = await recv(ws)
        assert hello["type"] == "hello"
        assert hello["protocol"] == PROTOCOL_VERSION
        assert hello["model"] == MODEL_NAME
        assert [c["name"] for c in hello["cameras"]] == ["dock", "door"]
        assert hello["auth_required"] is False
        assert hello["limits"] == {"max_message_bytes": 65536, "max_questions_in_flight": 2}


async def test_ask_gets_ack_deltas_and_a_final_answer_with_evidence() -> None:
    async with running_server() as h, h.connect() as ws:
        await recv(ws)
        await h.feed("dock", 5)
        before = time.time()
        messages = await ask(ws, "q1", "Who walked by?", camera="dock")
        ack, *deltas, answer = messages
        assert ack == {"type": "ack", "id": "q1", "camera": "dock", "since": None, "until": None}
        assert [d["type"] for d in deltas] == ["delta"] * 4
        assert [d["seq"] for d in deltas] == [0, 1, 2, 3]
        assert answer["type"] == "answer" and answer["finish_reason"] == "stop"
        assert "".join(d["text"] for d in deltas) == answer["text"]
        assert answer["text"] == "Seen 3 moments. word0 word1 word2"
        evidence = answer["evidence"]
        assert [e["camera"] for e in evidence] == ["dock"] * 3
        assert [e["start_s"] for e in evidence] == [4.0, 3.0, 2.0]
        assert [e["score"] for e in evidence] == pytest.approx([0.9, 0.8, 0.7])
        for item in evidence:
            assert item["end_s"] == item["start_s"] + 1.0
            start = parse_wall_time(item["start_time"])
            assert before - 10 < start <= before
            assert parse_wall_time(item["end_time"]) == pytest.approx(start + 1.0, abs=0.002)
        timings = answer["timings"]
        assert timings["tokens"] == 4
        assert timings["ttft_ms"] >= 0 and timings["tokens_per_s"] > 0
        assert timings["total_ms"] >= timings["ttft_ms"] >= timings["queue_ms"] >= 0
        # the fake worker has no memory: its retrieval figures are unknown, not zero
        assert timings["retrieval_ms"] is None and timings["blocks_loaded"] is None
        # the evidence frame can be fetched over HTTP on the same port
        url = f"http://127.0.0.1:{h.port}{evidence[0]['frame_url']}"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert Image.open(io.BytesIO(body)).format == "JPEG"


async def test_a_time_range_limits_the_evidence_and_is_acknowledged() -> None:
    async with running_server() as h, h.connect() as ws:
        await recv(ws)
        await h.feed("dock", 10)
        asked_at = time.time()
        ack, *_, answer = await ask(ws, "q", since="3s", until="now")
        since, until = parse_wall_time(ack["since"]), parse_wall_time(ack["until"])
        assert since == pytest.approx(asked_at - 3, abs=1) and until == pytest.approx(
            asked_at, abs=1
        )
        assert answer["evidence"]
        for item in answer["evidence"]:
            assert since <= parse_wall_time(item["start_time"]) <= until


async def test_cancel_stops_an_answer_midway() -> None:
    worker = FakeWorker(token_gate=threading.Event(), answer_words=100)
    async with running_server(worker=worker) as h, h.connect() as ws:
        await recv(ws)
        await send(ws, {"type": "ask", "id": "long", "question": "Tell me everything."})
        assert (await recv(ws))["type"] == "ack"
        first = await recv(ws)
        assert first["type"] == "delta" and first["seq"] == 0
        await send(ws, {"type": "cancel", "id": "long"})
        (answer,) = await until_terminal(ws, "long")
        assert answer["type"] == "answer" and answer["finish_reason"] == "cancelled"
        assert answer["text"] == first["text"]
        # the connection goes on
        await send(ws, {"type": "status", "id": "s"})
        assert (await until_terminal_status(ws))["id"] == "s"


async def until_terminal_status(ws: Any) -> dict[str, Any]:
    while True:
        message = await recv(ws)
        if message["type"] == "status":
            return message


async def test_cancel_of_an_unknown_question_is_a_bad_request() -> None:
    async with running_server() as h, h.connect() as ws:
        await recv(ws)
        await send(ws, {"type": "cancel", "id": "nope"})
        error = await recv(ws)
        assert error["type"] == "error" and error["code"] == "bad_request"
        assert error["id"] == "nope" and error["request_type"] == "cancel"


async def test_two_clients_ask_at_once() -> None:
    async with running_server() as h, h.connect() as a, h.connect() as b:
        await recv(a)
        await recv(b)
        await h.feed("dock", 2)
        await h.feed("door", 4)
        got_a, got_b = await asyncio.gather(
            ask(a, "same-id", camera="dock"), ask(b, "same-id", camera="door")
        )
        assert got_a[-1]["text"].startswith("Seen 2 moments.")
        assert got_b[-1]["text"].startswith("Seen 3 moments.")
        assert {e["camera"] for e in got_a[-1]["evidence"]} == {"dock"}
        assert {e["camera"] for e in got_b[-1]["evidence"]} == {"door"}


async def test_status_reports_cameras_memory_and_queues() -> None:
    async with running_server() as h, h.connect() as ws:
        await recv(ws)
        h.board.set_state("dock", "online")
        h.board.set_state("door", "offline", "connection refused")
        await h.feed("dock", 3)
        await send(ws, {"type": "status", "id": "s1"})
        status = await recv(ws)
        assert status["type"] == "status" and status["id"] == "s1"
        assert status["ready"] is True and status["model"] == MODEL_NAME
        cams = {c["name"]: c for c in status["cameras"]}
        assert cams["dock"]["state"] == "online"
        memory = cams["dock"]["memory"]
        assert (memory["blocks"], memory["ram_bytes"], memory["disk_bytes"]) == (3, 3000, 0)
        assert memory["start_time"] is not None and memory["end_time"] is not None
        assert parse_wall_time(memory["start_time"]) <= parse_wall_time(memory["end_time"])
        assert cams["dock"]["compression"]["pruner_kept_share"] == 0.25
        assert cams["dock"]["lag_s"] is None or cams["dock"]["lag_s"] >= 0.0
        assert cams["dock"]["last_frame_time"] is not None
        assert cams["door"]["state"] == "offline"
        assert cams["door"]["reason"] == "connection refused"
        assert cams["door"]["memory"]["blocks"] is None
        assert status["engine"] == {"queued_frames": 0, "queued_questions": 0}


BAD_MESSAGES = [
    ("{not json", "bad_request", None, "not valid JSON"),
    ('{"type":"dance","id":"d1"}', "bad_request", "d1", "unknown message type"),
    ('{"type":"ask","id":"a1"}', "bad_request", "a1", "'question'"),
    ('{"type":"ask","id":"a2","question":"q","camera":"attic"}', "unknown_camera", "a2", "attic"),
    (b"\x00\x01binary", "bad_request", None, "binary"),
    ('{"type":"ask","id":"a3","question":"' + "x" * 3000 + '"}', "bad_request", None, "limit"),
]


@pytest.mark.parametrize(("raw", "code", "request_id", "fragment"), BAD_MESSAGES)
async def test_bad_input_gets_its_error_and_the_connection_lives_on(
    raw: str | bytes, code: str, request_id: str | None, fragment: str
) -> None:
    async with running_server(max_message_bytes=2048) as h, h.connect() as ws:
        await recv(ws)
        await ws.send(raw)
        error = await recv(ws)
        assert error["type"] == "error"
        assert (error["code"], error["id"]) == (code, request_id)
        assert fragment in error["message"]
        answer = (await ask(ws, "after"))[-1]
        assert answer["type"] == "answer" and answer["finish_reason"] == "stop"
        assert h.metrics.ws_errors.value(code=code) == 1


async def test_unknown_camera_lists_the_cameras() -> None:
    async with running_server() as h, h.connect() as ws:
        await recv(ws)
        (error,) = await ask(ws, "q", camera="attic")
        assert error["code"] == "unknown_camera"
        assert error["message"] == "there is no camera named 'attic'; cameras: dock, door"


async def test_a_message_over_the_transport_limit_closes_only_that_connection() -> None:
    async with running_server(max_message_bytes=2048, transport_max_message_bytes=4096) as h:
        async with h.connect() as ws:
            await recv(ws)
            await ws.send("x" * 10_000)
            with pytest.raises(ConnectionClosed) as info:
                await recv(ws)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        async with h.connect() as ws:
            await recv(ws)
            assert (await ask(ws, "q"))[-1]["type"] == "answer"


async def test_questions_in_flight_per_client_are_capped() -> None:
    gate = threading.Event()
    worker = FakeWorker(token_gate=gate)
    async with running_server(worker=worker, max_questions_in_flight=1) as h, h.connect() as ws:
        await recv(ws)
        await send(ws, {"type": "ask", "id": "one", "question": "q"})
        assert (await recv(ws))["type"] == "ack"
        (busy,) = await ask(ws, "two")
        assert busy["code"] == "busy" and "1 questions in flight" in busy["message"]
        # the cap is per client: another connection may ask meanwhile
        async with h.connect() as other:
            await recv(other)
            await send(other, {"type": "ask", "id": "other", "question": "q"})
            assert (await recv(other))["type"] == "ack"
            gate.set()
            assert (await until_terminal(other, "other"))[-1]["type"] == "answer"
        assert (await until_terminal(ws, "one"))[-1]["type"] == "answer"
        # once the answer is in, the client may ask again
        assert (await ask(ws, "three"))[-1]["type"] == "answer"


async def test_an_id_in_flight_cannot_be_reused() -> None:
    gate = threading.Event()
    async with running_server(worker=FakeWorker(token_gate=gate)) as h, h.connect() as ws:
        await recv(ws)
        await send(ws, {"type": "ask", "id": "dup", "question": "q"})
        assert (await recv(ws))["type"] == "ack"
        await send(ws, {"type": "ask", "id": "dup", "question": "q"})
        while (message := await recv(ws))["type"] != "error":
            pass
        assert message["code"] == "bad_request" and "already used" in message["message"]
        gate.set()
        assert (await until_terminal(ws, "dup"))[-1]["type"] == "answer"


async def test_a_worker_failure_is_an_internal_error_for_that_question() -> None:
    async with running_server() as h, h.connect() as ws:
        await recv(ws)
        *_, error = await ask(ws, "boom", "please explode")
        assert error["type"] == "error" and error["code"] == "internal"
        assert error["id"] == "boom" and error["request_type"] == "ask"
        assert (await ask(ws, "fine"))[-1]["type"] == "answer"


class _FlakyBoard(CameraBoard):
    """A board that fails on demand, to show a crashing handler does not end the server."""

    fail = False

    def views(self) -> tuple[CameraView, ...]:
        if self.fail:
            raise RuntimeError("board exploded")
        return super().views()


async def test_a_crashing_handler_answers_internal_and_everything_lives_on() -> None:
    board = _FlakyBoard(["dock"])
    async with running_server(board=board) as h, h.connect() as ws:
        await recv(ws)
        board.fail = True
        await send(ws, {"type": "status", "id": "s"})
        error = await recv(ws)
        assert (error["type"], error["code"], error["id"]) == ("error", "internal", "s")
        board.fail = False
        await send(ws, {"type": "status", "id": "s2"})
        assert (await recv(ws))["type"] == "status"
        async with h.connect() as other:
            assert (await recv(other))["type"] == "hello"


# --- authentication ---------------------------------------------------------------------------


async def test_without_a_token_only_auth_is_accepted() -> None:
    async with running_server(token="s3cret") as h, h.connect() as ws:
        hello = await recv(ws)
        assert hello["auth_required"] is True
        assert hello["cameras"] == [] and hello["model"] is None
        (error,) = await ask(ws, "q")
        assert (error["code"], error["id"], error["request_type"]) == ("unauthorized", "q", "ask")
        await send(ws, {"type": "auth", "token": "wrong", "id": "a1"})
        error = await recv(ws)
        assert (error["code"], error["id"]) == ("unauthorized", "a1")
        await send(ws, {"type": "auth", "token": "s3cret"})
        hello = await recv(ws)
        assert hello["auth_required"] is False and len(hello["cameras"]) == 2
        assert (await ask(ws, "q2"))[-1]["type"] == "answer"


async def test_a_wrong_header_token_gets_an_error_and_the_connection_stays() -> None:
    async with running_server(token="s3cret") as h, h.connect(token="nope") as ws:
        assert (await recv(ws))["auth_required"] is True
        error = await recv(ws)
        assert error["code"] == "unauthorized" and "Authorization header" in error["message"]
        await send(ws, {"type": "auth", "token": "s3cret"})
        assert (await recv(ws))["auth_required"] is False


async def test_the_right_header_token_authenticates_at_once() -> None:
    async with running_server(token="s3cret") as h, h.connect(token="s3cret") as ws:
        assert (await recv(ws))["auth_required"] is False
        assert (await ask(ws, "q"))[-1]["type"] == "answer"


async def test_repeated_wrong_tokens_close_the_connection() -> None:
    async with running_server(token="s3cret") as h, h.connect() as ws:
        await recv(ws)
        for i in range(5):
            await send(ws, {"type": "auth", "token": f"guess{i}"})
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008


async def test_a_client_that_never_authenticates_is_closed() -> None:
    async with running_server(token="s3cret", auth_timeout_s=0.2) as h, h.connect() as ws:
        await recv(ws)
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws, timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.reason == "authentication timed out"


# --- limits -----------------------------------------------------------------------------------


async def test_clients_over_the_cap_are_told_busy() -> None:
    async with running_server(max_clients=1) as h, h.connect() as first:
        await recv(first)
        async with h.connect() as second:
            error = await recv(second)
            assert error["code"] == "busy" and "1 clients" in error["message"]
            with pytest.raises(ConnectionClosed) as info:
                await recv(second)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        assert (await ask(first, "q"))[-1]["type"] == "answer"
        assert h.metrics.ws_rejected.value(reason="max_clients") == 1


async def _ask_without_reading(port: int, url: str) -> asyncio.StreamWriter:
    """Open a real protocol client (websockets' sans-I/O one) over a socket with a tiny
    receive buffer, ask for a long answer and never read again."""
    protocol = ClientProtocol(parse_uri(url))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    protocol.send_request(protocol.connect())
    writer.write(b"".join(protocol.data_to_send()))
    protocol.receive_data(await reader.readuntil(b"\r\n\r\n"))
    assert protocol.handshake_exc is None
    protocol.send_text(b'{"type":"ask","id":"big","question":"Everything, please."}')
    writer.write(b"".join(protocol.data_to_send()))
    await writer.drain()
    return writer


async def test_a_slow_client_is_disconnected_not_buffered() -> None:
    """A client that stops reading while a long answer streams is cut off; others carry on."""
    worker = FakeWorker(answer_words=2000, word_text="x" * 4000)
    async with running_server(
        worker=worker, send_queue_messages=4, write_limit_bytes=1024, slow_client_timeout_s=0.5
    ) as h:
        writer = await _ask_without_reading(h.port, h.url)
        await _wait_for(lambda: h.metrics.ws_slow_disconnects.value() == 1, timeout=20)
        await _wait_for(lambda: h.server.clients == 0)
        writer.close()
        # the server is fine and other clients are served
        async with h.connect() as ws:
            await recv(ws)
            worker.answer_words, worker.word_text = 2, "w"
            assert (await ask(ws, "small"))[-1]["text"] == "Seen 0 moments. w0 w1"


async def test_a_client_that_does_not_read_cannot_hold_up_shutdown() -> None:
    worker = FakeWorker(answer_words=2000, word_text="x" * 4000)
    async with running_server(
        worker=worker, write_limit_bytes=1024, slow_client_timeout_s=600
    ) as h:
        writer = await _ask_without_reading(h.port, h.url)
        await _wait_for(lambda: h.metrics.answers.value(outcome="stop") == 1, timeout=20)
        await asyncio.wait_for(h.server.stop(), 20)
        assert h.server.clients == 0
        writer.close()


async def test_stopping_lets_answers_in_flight_finish_and_refuses_new_work() -> None:
    gate = threading.Event()
    async with running_server(worker=FakeWorker(token_gate=gate)) as h, h.connect() as ws:
        await recv(ws)
        await send(ws, {"type": "ask", "id": "last", "question": "q"})
        assert (await recv(ws))["type"] == "ack"
        port = h.port
        stopping = asyncio.create_task(h.server.stop(drain_s=10))
        await _wait_for(lambda: h.server.context.state.draining)
        (refused,) = await ask(ws, "new")
        assert refused["code"] == "busy" and "shutting down" in refused["message"]
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        gate.set()
        answer = (await until_terminal(ws, "last"))[-1]
        assert answer["type"] == "answer" and answer["finish_reason"] == "stop"
        await asyncio.wait_for(stopping, 10)
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_stopping_without_a_drain_cancels_answers_in_flight() -> None:
    worker = FakeWorker(token_gate=threading.Event(), answer_words=100)
    async with running_server(worker=worker) as h, h.connect() as ws:
        await recv(ws)
        await send(ws, {"type": "ask", "id": "cut", "question": "q"})
        assert (await recv(ws))["type"] == "ack"
        await asyncio.to_thread(worker.first_token_sent.wait, 5)
        await asyncio.wait_for(h.server.stop(), 10)
        await _wait_for(lambda: h.metrics.answers.value(outcome="cancelled") == 1)
        # the client got the question's terminal message before the close
        got = await until_terminal(ws, "cut", timeout=5)
        assert got[-1]["type"] == "answer" and got[-1]["finish_reason"] == "cancelled", got
        with pytest.raises(ConnectionClosed):
            await recv(ws)


async def test_a_policy_close_still_ends_every_accepted_question() -> None:
    gate = threading.Event()
    async with (
        running_server(worker=FakeWorker(token_gate=gate), token="s3cret") as h,
        h.connect(token="s3cret") as ws,
    ):
        await recv(ws)
        await send(ws, {"type": "ask", "id": "open", "question": "q"})
        assert (await recv(ws))["type"] == "ack"
        for i in range(5):  # five wrong tokens close the connection (1008) ...
            await send(ws, {"type": "auth", "token": f"guess{i}"})
        got: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                got.append(await recv(ws))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        # ... but only after the question in flight got its one terminal message
        ends = [m for m in got if m.get("id") == "open" and m["type"] in ("answer", "error")]
        assert len(ends) == 1 and ends[0]["finish_reason"] == "cancelled", got
        gate.set()
