"""The page against a daemon without a token: no login, straight to the cameras."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect

from tests.clients.web.browser import Recorder, ask, natural_sizes
from tests.clients.web.conftest import LIVE_CAMERA, run_daemon
from tests.support.daemon import DaemonProcess


@pytest.fixture(scope="module")
def open_daemon(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Callable[[str], Path]
) -> Iterator[DaemonProcess]:
    folder = tmp_path_factory.mktemp("web-open")
    yield from run_daemon(folder, tiny_model_dir("llava_onevision"), token=False)


def test_without_a_token_the_page_needs_no_login(
    context: BrowserContext, open_daemon: DaemonProcess
) -> None:
    page = context.new_page()
    recorder = Recorder(open_daemon.http_url).attach(page)
    page.goto(open_daemon.http_url + "/")
    live = page.locator(f'.camera[data-camera="{LIVE_CAMERA}"]')
    expect(live.locator(".state")).to_have_text("online")
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#logout")).to_be_hidden()
    page.wait_for_function(
        f"Number(document.querySelector('.camera[data-camera=\"{LIVE_CAMERA}\"]')"
        ".dataset.blocks) >= 1",
        timeout=90_000,
    )
    answer_id = ask(page, "What is there?")
    selector = f'.entry[data-id="{answer_id}"]'
    assert page.get_attribute(selector, "data-outcome") in ("stop", "length")
    page.wait_for_selector(f"{selector} .evidence img")
    page.wait_for_function(
        f"[...document.querySelectorAll('{selector} .evidence img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    assert all(w > 0 for w, _ in natural_sizes(page, f"{selector} .evidence img"))
    assert recorder.problems() == []
