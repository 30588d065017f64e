"""SIGTERM finishes the answer in flight, flushes the memory and exits 0; a daemon restarted on
the same store answers about what the first one saw."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.support.daemon import (
    DaemonProcess,
    camera_status,
    client,
    parse_time,
    status,
    wait_for_blocks,
    write_config,
)
from tests.support.ws import ask, recv, send, until_terminal

CAMERA = "porch"


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_sigterm_flushes_and_a_restarted_daemon_remembers(
    tmp_path: Path, tiny_llava: Path, short_clip: Path
) -> None:
    store = tmp_path / "memory"
    config = write_config(
        tmp_path / "first.yaml",
        cameras=[{"name": CAMERA, "path": str(short_clip), "fps": 1}],
        model=tiny_llava,
        store=store,
        max_new_tokens=32,
    )
    first = DaemonProcess(["--config", str(config)], tmp_path / "first.log")
    first.start()
    try:
        async with client(first) as ws:
            await recv(ws)
            await wait_for_blocks(ws, CAMERA, 4)
            seen = (await ask(ws, "before", camera=CAMERA))[-1]
            assert seen["type"] == "answer", seen
            # an answer in flight when SIGTERM arrives is finished, then the daemon exits 0
            await send(ws, {"type": "ask", "id": "last", "question": "And then?"})
            ack = await recv(ws)
            assert ack["type"] == "ack", ack
            first.stop_nowait(signal.SIGTERM)
            last = await until_terminal(ws, "last")
            assert last[-1]["type"] == "answer", last
            assert last[-1]["finish_reason"] in ("stop", "length"), last[-1]
        assert first.wait() == 0, first.log_tail()
        log = first.log_text()
        assert "memories flushed" in log and "shutdown complete" in log
        assert "Traceback" not in log, first.log_tail()
    finally:
        first.close()
    assert any(store.iterdir()), "nothing was stored"

    # The same camera name, now a source that never delivers (nothing listens on the port):
    # everything the restarted daemon knows comes from the store. Flags instead of a file.
    second = DaemonProcess(
        [
            "--source",
            f"{CAMERA}=rtsp://127.0.0.1:{closed_port()}/gone",
            "--model",
            str(tiny_llava),
            "--port",
            "0",
            "--store-dir",
            str(store),
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
        ],
        tmp_path / "second.log",
    )
    second.start()
    try:
        async with client(second, token=None) as ws:
            hello = await recv(ws)
            assert [c["name"] for c in hello["cameras"]] == [CAMERA]
            cam = camera_status(await status(ws), CAMERA)
            assert cam["state"] != "online"
            assert cam["memory"]["blocks"] >= 4
            messages = await ask(ws, "after", "What did you see?", camera=CAMERA)
        answer = messages[-1]
        assert answer["type"] == "answer", messages
        assert answer["evidence"]
        for moment in answer["evidence"]:
            start, end = parse_time(moment["start_time"]), parse_time(moment["end_time"])
            # moments of the first run: before it stopped, after it started
            assert first.started_at - 1 <= start <= end <= second.started_at, moment
            assert 0.0 <= moment["start_s"] <= moment["end_s"] <= 40.0
        assert second.stop(signal.SIGINT) == 0, second.log_tail()
    finally:
        second.close()
