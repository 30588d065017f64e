"""No credential reaches the daemon's log, at any level: -q, default, -v, -vv (where the
websockets library logs every handshake header and every frame's text)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.support.daemon import TOKEN, DaemonProcess, aget, write_config
from tests.support.ws import recv, send

CAMERA_PASSWORD = "cam-pass-77f1e0"
QUERY_TOKEN = "query-tok-9c3d21"
WRONG_TOKENS = ("wrong-header-4b8e11", "wrong-inband-a02f6c")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("flags", [["-q"], [], ["-v"], ["-vv"]], ids=["q", "default", "v", "vv"])
async def test_no_secret_in_the_log_at_any_level(
    tmp_path: Path, tiny_llava: Path, flags: list[str]
) -> None:
    url = f"rtsp://viewer@127.0.0.1:{_closed_port()}/gone?token={QUERY_TOKEN}"
    config = write_config(
        tmp_path / "daemon.yaml",
        cameras=[{"name": "gate", "url": url, "password_env": "E2E_CAMERA_PASSWORD"}],
        model=tiny_llava,
        store=tmp_path / "memory",
    )
    daemon = DaemonProcess(
        ["--config", str(config)],
        tmp_path / "daemon.log",
        env={"E2E_CAMERA_PASSWORD": CAMERA_PASSWORD},
    )
    daemon.args[3:3] = flags  # global flags go before the sub-command
    daemon.start()
    try:
        bad = {"Authorization": f"Bearer {WRONG_TOKENS[0]}"}
        async with connect(daemon.ws_url, additional_headers=bad, open_timeout=20) as ws:
            await recv(ws)  # hello
            assert (await recv(ws))["code"] == "unauthorized"
            await send(ws, {"type": "auth", "token": WRONG_TOKENS[1]})
            assert (await recv(ws))["code"] == "unauthorized"
            await send(ws, {"type": "auth", "token": TOKEN})
            assert (await recv(ws))["type"] == "hello"
            await send(ws, {"type": "status", "id": "s"})
            assert (await recv(ws))["type"] == "status"
        good = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(daemon.ws_url, additional_headers=good, open_timeout=20) as ws:
            assert (await recv(ws))["auth_required"] is False
        assert (await aget(f"{daemon.http_url}/metrics", TOKEN)).status == 200
        assert (await aget(f"{daemon.http_url}/metrics", WRONG_TOKENS[0])).status == 401
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log_tail()
    finally:
        daemon.close()
    log = daemon.log_text()
    assert log.strip(), "the daemon logged nothing"
    if flags == ["-vv"]:  # the debug output that used to carry the header is there, masked
        assert "Authorization: ***" in log or "authorization: ***" in log.lower(), log[-3000:]
    for secret in (TOKEN, CAMERA_PASSWORD, QUERY_TOKEN, *WRONG_TOKENS):
        assert secret not in log, f"{secret!r} is in the {flags} log"
