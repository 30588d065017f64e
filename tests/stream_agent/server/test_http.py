"""HTTP on the WebSocket port: health, readiness, metrics, frames, static files, traversal."""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from tests.stream_agent.engine.fake_worker import FakeWorker, make_frame
from tests.stream_agent.server.harness import Harness, running_server
from tests.support.prometheus import sample_values

TOKEN = "http-s3cret"


async def http(
    port: int,
    path: str,
    *,
    method: str = "GET",
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send the request line exactly as given (no client-side path normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        parsed[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


def _feed_board(h: Harness, camera: str, count: int, *, start: float) -> None:
    for i in range(count):
        h.board.offer_frame(make_frame(camera, i, pts=float(i), wall=start + i, size=96))


async def test_healthz_is_open_and_readyz_gives_the_reason() -> None:
    async with running_server(token=TOKEN) as h:
        status, _, body = await http(h.port, "/healthz")
        assert (status, body) == (200, b"ok\n")
        status, _, body = await http(h.port, "/readyz")
        assert status == 503 and body == b"not ready: no camera is online (0 of 2)\n"
        h.board.set_state("door", "online")
        status, _, body = await http(h.port, "/readyz")
        assert status == 200 and body == b"ready: 1 of 2 cameras online\n"
        status, _, body = await http(h.port, "/healthz", method="HEAD")
        assert status == 200 and body == b""


async def test_readyz_says_when_the_model_did_not_load() -> None:
    worker = FakeWorker(open_error=RuntimeError("the folder /models/x has no config.json"))
    async with running_server(worker=worker) as h:
        h.board.set_state("dock", "online")
        deadline = time.monotonic() + 5
        while True:
            status, _, body = await http(h.port, "/readyz")
            if b"could not be loaded" in body or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert status == 503
        assert body.decode().startswith("not ready: the model could not be loaded: the folder")


_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? '
    r"(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$"
)


def check_prometheus_text(text: str) -> dict[str, str]:
    """Validate the exposition format line by line; return {metric name: type}."""
    types: dict[str, str] = {}
    helped: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ")[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram")
            assert name in helped and name not in types
            types[name] = kind
        else:
            match = _SAMPLE.match(line)
            assert match is not None, f"not a sample line: {line!r}"
            name = match.group(1)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in types or base in types, f"sample before its TYPE: {line!r}"
    return types


async def test_metrics_need_the_token_and_use_the_prometheus_format() -> None:
    async with running_server(token=TOKEN) as h:
        status, headers, _ = await http(h.port, "/metrics")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert (await http(h.port, "/metrics", token="wrong"))[0] == 401
        h.board.set_state("dock", "online")
        h.board.set_counters("dock", frames=120, dropped=3, reconnects=1, fps=1.0)
        await h.feed("dock", 2)
        async with h.connect(token=TOKEN) as ws:
            await ws.recv()
            await ws.send('{"type":"ask","id":"q","question":"what?"}')
            while '"answer"' not in await ws.recv():
                pass
            status, headers, body = await http(h.port, "/metrics", token=TOKEN)
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = body.decode()
        types = check_prometheus_text(text)
        assert types["stream_agent_answer_ttft_seconds"] == "histogram"
        assert types["stream_agent_camera_frames_total"] == "counter"
        values = sample_values(text)
        for name, labels, value in (
            ("stream_agent_camera_state", {"camera": "dock", "state": "online"}, 1),
            ("stream_agent_camera_state", {"camera": "dock", "state": "offline"}, 0),
            ("stream_agent_camera_frames_total", {"camera": "dock"}, 120),
            ("stream_agent_camera_dropped_frames_total", {"camera": "dock"}, 3),
            ("stream_agent_camera_reconnects_total", {"camera": "dock"}, 1),
            ("stream_agent_engine_frames_encoded_total", {"camera": "dock"}, 2),
            ("stream_agent_memory_blocks", {"camera": "dock"}, 2),
            ("stream_agent_answers_total", {"outcome": "stop"}, 1),
            ("stream_agent_answer_ttft_seconds_count", {}, 1),
            ("stream_agent_answer_ttft_seconds_bucket", {"le": "+Inf"}, 1),
            ("stream_agent_ws_clients", {}, 1),
            ("stream_agent_engine_queue_depth", {"kind": "questions"}, 0),
            ("stream_agent_model_ready", {}, 1),
        ):
            assert values.get((name, frozenset(labels.items()))) == value, (name, labels)


async def test_metrics_speak_openmetrics_when_asked() -> None:
    async with running_server(token=TOKEN) as h:
        status, headers, body = await http(
            h.port, "/metrics", token=TOKEN, headers={"Accept": "application/openmetrics-text"}
        )
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert any(f.name == "stream_agent_answers" for f in openmetrics_families(text))


async def test_snapshot_serves_the_newest_frame() -> None:
    async with running_server(token=TOKEN) as h:
        status, _, _ = await http(h.port, "/cameras/dock/snapshot.jpg")
        assert status == 401
        status, headers, body = await http(h.port, "/cameras/dock/snapshot.jpg", token=TOKEN)
        assert status == 503 and headers["retry-after"] == "1"
        _feed_board(h, "dock", 3, start=1000.0)
        status, headers, body = await http(h.port, "/cameras/dock/snapshot.jpg", token=TOKEN)
        assert status == 200 and headers["content-type"] == "image/jpeg"
        assert headers["x-frame-pts"] == "2.000"
        assert headers["x-frame-time"] == "1970-01-01T00:16:42.000Z"
        picture = Image.open(io.BytesIO(body))
        assert picture.format == "JPEG" and picture.size == (96, 96)  # full size
        status, _, _ = await http(h.port, "/cameras/attic/snapshot.jpg", token=TOKEN)
        assert status == 404


async def test_evidence_frames_are_found_by_wall_time() -> None:
    async with running_server() as h:
        _feed_board(h, "dock", 5, start=1000.0)
        status, headers, body = await http(h.port, "/cameras/dock/frame.jpg?at=1002.4")
        assert status == 200 and headers["x-frame-pts"] == "2.000"
        assert Image.open(io.BytesIO(body)).size == (64, 64)  # kept small (evidence_max_side)
        status, _, body = await http(h.port, "/cameras/dock/frame.jpg?at=2000")
        assert status == 404 and b"no frame of camera dock is kept near" in body
        for query in ("", "?at=", "?at=abc", "?at=nan", "?at=1&at=2"):
            status, _, body = await http(h.port, f"/cameras/dock/frame.jpg{query}")
            assert status == 400 and b"?at=" in body
        assert (await http(h.port, "/cameras/door/frame.jpg?at=1000"))[0] == 404


async def test_kept_evidence_frames_stay_within_their_byte_budget() -> None:
    from stream_agent.cameras import CameraBoard

    async with running_server() as h:
        board = CameraBoard(["dock"], evidence_bytes=3000, metrics=h.metrics)
        for i in range(50):
            board.offer_frame(make_frame("dock", i, pts=float(i), wall=1000.0 + i, size=64))
        assert board.frame_at("dock", 1049.0) is not None
        assert board.frame_at("dock", 1000.0) is None  # evicted
        assert h.metrics.evidence_frames_evicted.value(camera="dock") > 0


async def test_other_methods_and_the_ws_path_over_plain_http() -> None:
    async with running_server() as h:
        status, headers, _ = await http(h.port, "/healthz", method="POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, _, body = await http(h.port, "/ws")
        assert status == 426 and b"WebSocket endpoint" in body
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
        status, _, body = await http(h.port, "/elsewhere", headers=upgrade)
        assert status == 404 and b"/ws" in body


async def test_browser_origins_other_than_the_server_are_refused() -> None:
    async with running_server(allowed_origins=("http://dashboard.local",)) as h:
        for origin, allowed in (
            ("http://evil.example", False),
            (f"http://127.0.0.1:{h.port}", True),
            ("http://dashboard.local", True),
        ):
            try:
                async with h.connect(origin=origin) as ws:
                    await ws.recv()
                accepted = True
            except Exception as exc:
                assert "403" in str(exc)
                accepted = False
            assert accepted is allowed, origin


# --- static files -----------------------------------------------------------------------------


@pytest.fixture
def web_tree(tmp_path: Path) -> Path:
    """A web root with a page and a sub-folder, beside a secret that must never be served."""
    root = tmp_path / "web"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>stream-agent</title>")
    (root / "js" / "app.js").write_text("console.log('hi');")
    (root / ".hidden").write_text("hidden")
    (tmp_path / "secret.txt").write_text("TOP-SECRET")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    return root


async def test_the_web_client_folder_is_served(web_tree: Path) -> None:
    async with running_server(token=TOKEN, web_root=web_tree) as h:
        status, headers, body = await http(h.port, "/")
        assert status == 200 and body.startswith(b"<!doctype html>")
        assert headers["content-type"] == "text/html; charset=utf-8"
        status, headers, body = await http(h.port, "/js/app.js")
        assert status == 200 and "javascript" in headers["content-type"]
        assert (await http(h.port, "/js/"))[0] == 404  # no index there, no listing
        assert (await http(h.port, "/missing.css"))[0] == 404


TRAVERSALS = [
    "/../secret.txt",
    "/js/../../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E%2Fsecret.txt",
    "/js/%2e%2e/%2e%2e/secret.txt",
    "/..%2fsecret.txt",
    "/..%5csecret.txt",
    "/%252e%252e/secret.txt",
    "/.%2e/secret.txt",
    "//etc/passwd",
    "/%2fetc%2fpasswd",
    "/escape.txt",
    "/.hidden",
    "/js/./app.js",
    "/index.html%00.js",
    "/%ff%fe",
    "/..",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_path_traversal_is_refused(web_tree: Path, path: str) -> None:
    async with running_server(web_root=web_tree) as h:
        status, _, body = await http(h.port, path)
        assert status in (400, 404)
        assert b"TOP-SECRET" not in body and b"root:" not in body


async def test_without_a_web_root_nothing_static_is_served() -> None:
    async with running_server(web_root=None) as h:
        assert (await http(h.port, "/"))[0] == 404
        assert (await http(h.port, "/index.html"))[0] == 404


@pytest.mark.parametrize("path", TRAVERSALS)
def test_resolve_static_refuses_traversal_directly(web_tree: Path, path: str) -> None:
    from stream_agent.server.static import resolve_static

    assert resolve_static(web_tree, path.split("?")[0]) is None


def test_resolve_static_finds_the_files_inside(web_tree: Path) -> None:
    from stream_agent.server.static import resolve_static

    assert resolve_static(web_tree, "/") == (web_tree / "index.html").resolve()
    assert resolve_static(web_tree, "/js/app.js") == (web_tree / "js/app.js").resolve()
    assert resolve_static(web_tree, "/js%2Fapp.js") == (web_tree / "js/app.js").resolve()
