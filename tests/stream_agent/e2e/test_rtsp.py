"""The daemon on a real RTSP server, beside a file camera: answers while frames flow, the RTSP
camera going offline does not disturb the other one, and it is picked up again when it returns."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.support.daemon import (
    TOKEN,
    DaemonProcess,
    aget,
    camera_status,
    client,
    parse_time,
    status,
    wait_for_blocks,
    write_config,
)
from tests.support.rtsp import RtspServer, gst_rtsp_problem
from tests.support.ws import ask, recv

pytestmark = pytest.mark.rtsp
PASSWORD = "s3cret-Pw"


async def test_rtsp_camera_answers_and_its_loss_leaves_the_other_camera_alone(
    tmp_path: Path, tiny_llava: Path, long_clip: Path, short_clip: Path
) -> None:
    problem = gst_rtsp_problem()
    if problem:
        pytest.skip(problem)
    rtsp = RtspServer(long_clip, mount="/cam").start()
    daemon = DaemonProcess(
        [
            "--config",
            str(
                write_config(
                    tmp_path / "daemon.yaml",
                    cameras=[
                        {
                            "name": "street",
                            "url": rtsp.url(),
                            "fps": 1,
                            "username": "viewer",
                            "password_env": "STREET_PASSWORD",
                        },
                        {"name": "lobby", "path": str(short_clip), "fps": 1},
                    ],
                    model=tiny_llava,
                    store=tmp_path / "memory",
                )
            ),
        ],
        tmp_path / "daemon.log",
        env={"STREET_PASSWORD": PASSWORD},
    )
    try:
        daemon.start()
        async with client(daemon) as ws:
            await recv(ws)
            await wait_for_blocks(ws, "street", 3)
            asked_at = time.time()
            messages = await ask(ws, "s1", "What moves on the street?", camera="street")
            answer = messages[-1]
            assert messages[0]["type"] == "ack" and answer["type"] == "answer", messages
            assert any(m["type"] == "delta" for m in messages)
            snapshot = await aget(f"{daemon.http_url}/cameras/street/snapshot.jpg", TOKEN)
            seen = float(snapshot.headers["X-Frame-Pts"]) + 0.001  # the header has 3 decimals
            for moment in answer["evidence"]:
                assert moment["camera"] == "street"
                assert 0.0 <= moment["start_s"] <= moment["end_s"] <= seen
                assert parse_time(moment["end_time"]) <= time.time() + 1
            assert answer["evidence"] and asked_at >= daemon.started_at

            # the RTSP camera drops: it goes stalled/offline, the file camera carries on
            lobby_before = camera_status(await status(ws), "lobby")["memory"]["blocks"]
            rtsp.terminate()
            deadline = time.monotonic() + 40
            while camera_status(await status(ws), "street")["state"] == "online":
                assert time.monotonic() < deadline, "the dropped camera still reads online"
                await asyncio.sleep(0.5)
            await wait_for_blocks(ws, "lobby", lobby_before + 2, timeout=30)
            lobby = await ask(ws, "l1", "Anything in the lobby?", camera="lobby")
            assert lobby[-1]["type"] == "answer", lobby
            assert all(m["camera"] == "lobby" for m in lobby[-1]["evidence"])
            street = await ask(ws, "s2", "And the street?", camera="street")
            assert street[-1]["type"] == "answer", street  # its memory is still there
            ready = await aget(f"{daemon.http_url}/readyz")
            assert ready.status == 200 and "1 of 2" in ready.text, ready.text

            # the camera comes back on the same address: a new session, a fresh cacher/pruner
            street_before = camera_status(await status(ws), "street")["memory"]["blocks"]
            rtsp.start()
            deadline = time.monotonic() + 60
            while camera_status(await status(ws), "street")["state"] != "online":
                assert time.monotonic() < deadline, "the camera did not reconnect"
                await asyncio.sleep(0.5)
            await wait_for_blocks(ws, "street", street_before + 2, timeout=30)
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log_tail()
        log = daemon.log_text()
        assert "camera street reconnected (session 1)" in log
        assert "Traceback" not in log, daemon.log_tail()
        assert PASSWORD not in log  # credentials are inserted for ingest only, never logged
    finally:
        daemon.close()
        rtsp.close()
