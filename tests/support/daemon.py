"""Helpers for the end-to-end tests: the daemon as a real subprocess, clips, clients, HTTP.

``DaemonProcess`` runs ``python -m stream_agent serve ...`` and reads the address it prints once
it is up (port 0: the kernel picks); its log goes to a file the tests read. The RTSP server is
``tests.support.rtsp``. Clients are real
``websockets`` clients on loopback; HTTP goes through ``urllib``.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import yaml
from websockets.asyncio.client import ClientConnection, connect

from tests.support.prometheus import sample
from tests.support.ws import recv, send

ROOT = Path(__file__).resolve().parents[2]
SHARED_CLIP = ROOT.parent / "shared" / "data" / "one-by-one-person-detection.mp4"
TOKEN = "e2e-test-token-5f2c"
TOKEN_ENV = "STREAM_AGENT_E2E_TOKEN"
_SERVING = re.compile(r"serving on http://([^/]+):(\d+)/")


# --- clips -------------------------------------------------------------------------------------


def moving_square(index: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """A textured background with a bright square that moves one step per frame."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx * 3) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], axis=-1).astype(
        np.uint8
    )
    side = max(4, height // 4)
    left = (index * 3) % max(1, width - side)
    top = (index * 2) % max(1, height - side)
    image[top : top + side, left : left + side] = (250, 30, 200)
    return image


def write_clip(
    path: Path, seconds: float, *, rate: int = 5, size: tuple[int, int] = (160, 120)
) -> Path:
    """A small H.264 MP4 of ``seconds`` at ``rate`` fps (written with PyAV)."""
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, rate)
        for i in range(int(seconds * rate)):
            frame = av.VideoFrame.from_ndarray(moving_square(i, width, height), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


# --- config ------------------------------------------------------------------------------------


def write_config(
    path: Path,
    *,
    cameras: Sequence[Mapping[str, Any]],
    model: Path,
    store: Path,
    token: bool = True,
    max_new_tokens: int = 8,
    **sections: Mapping[str, Any],
) -> Path:
    """A YAML config for a test daemon: loopback, port 0, the tiny model on the CPU."""
    server: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "max_message_bytes": 4096}
    if token:
        server["token_env"] = TOKEN_ENV
    data: dict[str, Any] = {
        "server": server,
        "cameras": [dict(c) for c in cameras],
        "model": {"path": str(model), "device": "cpu", "max_new_tokens": max_new_tokens},
        "pruner": {"tokens_per_frame": 8},
        "memory": {"store_dir": str(store)},
        "engine": {"shutdown_grace_s": 20},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --- the daemon --------------------------------------------------------------------------------


class DaemonProcess:
    """``stream-agent serve`` as a subprocess (stdout: the address line; stderr: a log file)."""

    def __init__(self, args: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None):
        self.args = [sys.executable, "-m", "stream_agent", "serve", *args]
        self.log = log
        self.env = {**os.environ, TOKEN_ENV: TOKEN, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.started_at = 0.0

    def start(self, timeout: float = 180.0) -> DaemonProcess:
        """Start and wait for the address line (printed once the model and memory are loaded)."""
        self.started_at = time.time()
        with self.log.open("w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                match = _SERVING.search(line)
                if match is not None:
                    self.host, self.port = match.group(1), int(match.group(2))
                    return self
                if not line and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        self.close()
        raise RuntimeError(f"the daemon did not start; its log ends with:\n{self.log_tail()}")

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def stop_nowait(self, sig: signal.Signals = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# --- the RTSP server ---------------------------------------------------------------------------


# --- clients -----------------------------------------------------------------------------------


def client(daemon: DaemonProcess, token: str | None = TOKEN) -> Any:
    """``async with client(daemon) as ws``: a WebSocket client (with the bearer header)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(daemon.ws_url, additional_headers=headers, open_timeout=20)


async def status(ws: ClientConnection, request_id: str = "s") -> dict[str, Any]:
    await send(ws, {"type": "status", "id": request_id})
    (reply,) = [m for m in await _until_type(ws, "status", request_id)]
    return reply


async def _until_type(ws: ClientConnection, kind: str, request_id: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(30):
        while True:
            message = await recv(ws)
            if message["type"] == kind and message.get("id") == request_id:
                return [message]


def camera_status(reply: Mapping[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in reply["cameras"] if c["name"] == name]
    assert found, f"no camera {name} in {reply}"
    camera: dict[str, Any] = found[0]
    return camera


async def wait_for_blocks(
    ws: ClientConnection, camera: str, count: int, timeout: float = 90.0
) -> dict[str, Any]:
    """Poll ``status`` until ``camera``'s memory holds at least ``count`` blocks."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        n += 1
        cam = camera_status(await status(ws, f"wait{n}"), camera)
        blocks = cam["memory"]["blocks"] if cam["memory"] else None
        if blocks is not None and blocks >= count:
            return cam
        if time.monotonic() > deadline:
            raise AssertionError(f"camera {camera} has {blocks} blocks after {timeout} s: {cam}")
        await asyncio.sleep(0.5)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --- HTTP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_get(url: str, token: str | None = None) -> HttpReply:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return HttpReply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, dict(exc.headers), exc.read())


async def aget(url: str, token: str | None = None) -> HttpReply:
    return await asyncio.to_thread(http_get, url, token)


def metric(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from Prometheus text (labels must match exactly)."""
    return sample(text, name, **labels)
