"""Fixtures of the web client's tests: one real daemon (token-protected, the tiny test model,
the shared clip replayed live, plus a camera that cannot connect), one headless Chromium, and a
logged-in page shared by the tests that need one."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.clients.web.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, Recorder, log_in
from tests.support.daemon import SHARED_CLIP, TOKEN, DaemonProcess, write_config

LIVE_CAMERA = "lobby"
DEAD_CAMERA = "yard"
MAX_NEW_TOKENS = 64


def free_port() -> int:
    """A loopback port free now (the daemon must come back on the same one after a restart)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_daemon(
    folder: Path, model: Path, *, token: bool = True, **sections: Mapping[str, Any]
) -> Iterator[DaemonProcess]:
    """The daemon on the shared clip (plus a camera that cannot connect), on a fixed free port
    so that a restart comes back where the page looks for it; ``sections`` are further config
    sections (``mqtt``, ``alerts``)."""
    if not SHARED_CLIP.is_file():
        pytest.skip(f"the shared test clip is absent ({SHARED_CLIP})")
    config = write_config(
        folder / "daemon.yaml",
        cameras=[
            {"name": LIVE_CAMERA, "path": str(SHARED_CLIP), "fps": 1},
            {"name": DEAD_CAMERA, "url": f"rtsp://127.0.0.1:{free_port()}/nothing"},
        ],
        model=model,
        store=folder / "memory",
        token=token,
        max_new_tokens=MAX_NEW_TOKENS,
        server={"port": free_port()},
        **sections,
    )
    process = DaemonProcess(["--config", str(config)], folder / "daemon.log")
    process.start()
    try:
        yield process
        if process.running():
            assert process.stop(signal.SIGTERM) == 0, process.log_tail()
    finally:
        process.close()


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Callable[[str], Path]
) -> Iterator[DaemonProcess]:
    """A daemon with a token."""
    folder = tmp_path_factory.mktemp("web")
    yield from run_daemon(folder, tiny_model_dir("llava_onevision"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}); run scripts/setup")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (empty storage) at desktop size, light scheme."""
    ctx = browser.new_context(viewport=DESKTOP, color_scheme="light")
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def session_page(browser: Browser, daemon: DaemonProcess) -> Iterator[tuple[Page, Recorder]]:
    """A page logged in since the module began, with a recorder attached before it loaded;
    its camera has memory to answer from."""
    ctx = browser.new_context(viewport=DESKTOP, color_scheme="light")
    page = ctx.new_page()
    recorder = Recorder(daemon.http_url).attach(page)
    page.goto(daemon.http_url + "/")
    log_in(page, TOKEN)
    page.wait_for_selector(f'.camera[data-camera="{LIVE_CAMERA}"][data-state="online"]')
    page.wait_for_function(
        f"Number(document.querySelector('.camera[data-camera=\"{LIVE_CAMERA}\"]')"
        ".dataset.blocks) >= 3",
        timeout=90_000,
    )
    try:
        yield page, recorder
    finally:
        ctx.close()
