"""Across a restart on the same store: time bounds hold (no moment of the second run in an
answer bounded to the first), and the evidence links of moments seen before the restart still
resolve to their JPEG (the frames live on disk with the memory)."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path
from typing import Any

from PIL import Image

from stream_agent.protocol import format_wall_time
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
from tests.support.ws import ask, recv

CAMERA = "shed"


async def _frame_ok(daemon: DaemonProcess, moment: dict[str, Any]) -> None:
    url = moment["frame_url"]
    assert url, moment
    reply = await aget(f"{daemon.http_url}{url}", TOKEN)
    assert reply.status == 200, (url, reply.status, reply.text[:200])
    assert reply.headers["Content-Type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(reply.body))
    picture.load()
    assert picture.format == "JPEG" and max(picture.size) <= 480
    at = float(url.rsplit("=", 1)[1])
    assert abs(parse_time(reply.headers["X-Frame-Time"]) - at) <= 2.0


def _within(answer: dict[str, Any], since: float, until: float) -> None:
    for moment in answer["evidence"]:
        assert parse_time(moment["start_time"]) >= since - 0.0015, (moment, since)
        assert parse_time(moment["end_time"]) <= until + 0.0015, (moment, until)


async def test_bounds_and_frame_links_hold_across_a_restart(
    tmp_path: Path, tiny_llava: Path, short_clip: Path
) -> None:
    store = tmp_path / "memory"

    def config(name: str) -> Path:
        return write_config(
            tmp_path / f"{name}.yaml",
            cameras=[{"name": CAMERA, "path": str(short_clip), "fps": 1}],
            model=tiny_llava,
            store=store,
            memory={"store_dir": str(store), "top_k": 2},
        )

    first = DaemonProcess(["--config", str(config("first"))], tmp_path / "first.log")
    first.start()
    try:
        async with client(first) as ws:
            await recv(ws)
            await wait_for_blocks(ws, CAMERA, 5)
            before = (await ask(ws, "before", "What is there?", camera=CAMERA))[-1]
            assert before["type"] == "answer" and before["evidence"], before
            for moment in before["evidence"]:
                await _frame_ok(first, moment)
        assert first.stop(signal.SIGTERM) == 0, first.log_tail()
    finally:
        first.close()
    first_until = time.time()
    first_since = first.started_at

    second = DaemonProcess(["--config", str(config("second"))], tmp_path / "second.log")
    second.start()
    try:
        async with client(second) as ws:
            await recv(ws)
            stored = camera_status(await status(ws), CAMERA)["memory"]["blocks"]
            # new frames arrive after the restart: the newest blocks are all of the second run
            await wait_for_blocks(ws, CAMERA, stored + 4)
            # the first run's frame links still resolve
            for moment in before["evidence"]:
                await _frame_ok(second, moment)
            # bounded to the first run's span: only moments of the first run, never the
            # second run's recent blocks
            bounded = await ask(
                ws,
                "first-run",
                "What happened then?",
                camera=CAMERA,
                since=format_wall_time(first_since),
                until=format_wall_time(first_until),
            )
            ack, answer = bounded[0], bounded[-1]
            assert ack["type"] == "ack" and answer["type"] == "answer", bounded
            assert answer["evidence"], answer
            _within(answer, parse_time(ack["since"]), parse_time(ack["until"]))
            for moment in answer["evidence"]:
                await _frame_ok(second, moment)
            # all cameras (no camera named) obey the same bounds
            everywhere = (
                await ask(
                    ws,
                    "first-run-all",
                    "And anywhere?",
                    since=format_wall_time(first_since),
                    until=format_wall_time(first_until),
                )
            )[-1]
            assert everywhere["type"] == "answer" and everywhere["evidence"], everywhere
            _within(everywhere, first_since, first_until)
            # before the stream began: nothing, and the answer says so
            empty = (
                await ask(
                    ws,
                    "before-all",
                    "Anything?",
                    since=format_wall_time(first_since - 7200),
                    until=format_wall_time(first_since - 3600),
                )
            )[-1]
            assert empty["type"] == "answer", empty
            assert empty["evidence"] == [] and empty["notes"] == ["no_moments"], empty
        assert second.stop(signal.SIGTERM) == 0, second.log_tail()
    finally:
        second.close()
    assert "Traceback" not in second.log_text(), second.log_tail()
