"""The web page in a real headless Chromium against the real daemon (tiny model, shared clip).

The tests run in file order on one daemon; the last one stops and restarts it. Screenshots go to
``tests/artifacts/web/``.
"""

from __future__ import annotations

import re
import signal

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, Page, expect

from tests.clients.web.browser import (
    ARTIFACTS,
    DESKTOP,
    FINISHED,
    PHONE,
    Recorder,
    ask,
    log_in,
    natural_sizes,
)
from tests.clients.web.conftest import DEAD_CAMERA, LIVE_CAMERA
from tests.support.daemon import TOKEN, DaemonProcess

Session = tuple[Page, Recorder]


def entry(page: Page, entry_id: str) -> str:
    return f'.entry[data-id="{entry_id}"]'


def ensure_answer(page: Page) -> str:
    """The id of a finished answer with evidence on the page (asking one if there is none)."""
    done = page.locator(f"{FINISHED}:has(.evidence img)")
    if done.count():
        found = done.first.get_attribute("data-id")
        assert found is not None
        return found
    return ask(page, "What is in the picture?")


def test_the_page_shows_every_camera_and_streams_an_answer(session_page: Session) -> None:
    page, recorder = session_page
    live = page.locator(f'.camera[data-camera="{LIVE_CAMERA}"]')
    expect(live.locator(".state")).to_have_text("online")
    dead = page.locator(f'.camera[data-camera="{DEAD_CAMERA}"]')
    expect(dead.locator(".state")).to_have_text(re.compile("connecting|offline"))
    expect(dead.locator(".reason")).not_to_be_empty()
    # The live preview refreshes from the snapshot endpoint.
    page.wait_for_selector(f'.camera[data-camera="{LIVE_CAMERA}"] .preview img:not([hidden])')
    assert natural_sizes(page, f'.camera[data-camera="{LIVE_CAMERA}"] .preview img')[0][0] > 0
    caption = live.locator(".preview figcaption")
    expect(caption).to_contain_text("Frame of")
    expect(caption).not_to_have_text(caption.inner_text(), timeout=10_000)  # it refreshes
    # The timeline and the system panel know the memory's span.
    expect(live.locator(".facts dd").nth(1)).to_contain_text("blocks")
    expect(page.locator("#memory-table tbody tr")).to_have_count(2)
    cells = page.locator("#memory-table tbody tr", has_text=LIVE_CAMERA).locator("td")
    covers, _, ram, disk, reuse, kept, lag = cells.all_inner_texts()
    assert re.search(r"\d:\d\d:\d\d.* – .*\d:\d\d:\d\d", covers), covers
    assert ram.endswith("B") and disk.endswith("B"), (ram, disk)
    assert reuse.endswith("%") and kept.endswith("%"), (reuse, kept)
    assert lag.endswith(" s"), lag

    answer_id = ask(page, "What did the person do?")
    selector = entry(page, answer_id)
    outcome = page.get_attribute(selector, "data-outcome")
    assert outcome in ("stop", "length"), page.inner_text(selector)
    deltas = int(page.get_attribute(f"{selector} .answer-text", "data-deltas") or 0)
    assert deltas >= 2, "the answer did not stream in pieces"
    text = page.inner_text(f"{selector} .answer-text")
    assert text.strip()
    assert page.get_attribute(f"{selector} .answer-text", "aria-busy") == "false"
    # Evidence thumbnails: real JPEGs from the daemon, each with its time and score.
    page.wait_for_function(
        f"[...document.querySelectorAll('{selector} .evidence img')]"
        ".every(i => i.complete && i.naturalWidth > 0) "
        f"&& document.querySelectorAll('{selector} .evidence img').length > 0"
    )
    sizes = natural_sizes(page, f"{selector} .evidence img")
    assert sizes and all(w > 0 and h > 0 for w, h in sizes), sizes
    captions = page.locator(f"{selector} .evidence li span").all_inner_texts()
    assert all(re.search(r"\d:\d\d:\d\d.* · \d\.\d\d$", c) for c in captions), captions
    # Evidence moments are marked on the camera's timeline.
    expect(live.locator(".mark").first).to_be_attached()
    assert recorder.problems() == []


def test_a_thumbnail_opens_large_and_the_timeline_asks_about_a_moment(
    session_page: Session,
) -> None:
    page, recorder = session_page
    answer_id = ensure_answer(page)
    page.locator(f"{entry(page, answer_id)} .thumb").first.click()
    dialog = page.locator("#frame-dialog")
    expect(dialog).to_be_visible()
    assert natural_sizes(page, "#frame-dialog-image")[0][0] > 0
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    before = page.locator(".entry").count()
    page.locator(f'.camera[data-camera="{LIVE_CAMERA}"] .mark').first.click()
    expect(page.locator(".entry")).to_have_count(before + 1)
    newest = page.locator(".entry").first
    expect(newest.locator(".question")).to_contain_text("What happened around")
    expect(newest.locator(".meta")).to_contain_text(f"camera {LIVE_CAMERA}")
    expect(page.locator("#range-any")).to_be_checked()  # the form stays as the person set it
    expect(newest).not_to_have_attribute("data-outcome", "streaming", timeout=60_000)
    assert newest.get_attribute("data-outcome") in ("stop", "length")
    assert recorder.problems() == []


def test_a_running_answer_can_be_cancelled(session_page: Session) -> None:
    """Two questions in flight; the second (queued behind the first in the engine, so the cancel
    cannot lose a race with a fast tiny model) is cancelled with its own button."""
    page, recorder = session_page
    before = page.locator(".entry").count()
    page.fill("#question", "What is on the floor?")
    page.click("#ask-send")
    expect(page.locator(".entry")).to_have_count(before + 1)
    first_id = page.locator(".entry").first.get_attribute("data-id")
    page.fill("#question", "Describe everything you saw, in detail.")
    page.select_option("#ask-camera", LIVE_CAMERA)
    page.check("#range-last")
    page.fill("#range-minutes", "5")
    page.click("#ask-send")
    second = page.locator(".entry").first
    expect(second.locator(".question")).to_contain_text("Describe everything")
    expect(second.locator(".outcome")).to_have_text("Answering…")
    second.get_by_role("button", name="Cancel").click()
    expect(second).to_have_attribute("data-outcome", "cancelled", timeout=30_000)
    expect(second.locator(".outcome")).to_contain_text("Cancelled")
    expect(second.locator(".meta")).to_contain_text(f"camera {LIVE_CAMERA}")
    other = page.locator(f'.entry[data-id="{first_id}"]')
    expect(other).not_to_have_attribute("data-outcome", "streaming", timeout=60_000)
    assert other.get_attribute("data-outcome") in ("stop", "length")
    expect(page.locator("#ask-cancel")).to_be_disabled()
    page.select_option("#ask-camera", "")
    page.check("#range-any")
    assert recorder.problems() == []


def test_a_wrong_token_shows_the_login_error(
    context: BrowserContext, daemon: DaemonProcess
) -> None:
    page = context.new_page()
    page.goto(daemon.http_url + "/")
    log_in(page, "not-the-token")
    expect(page.locator("#token-error")).to_contain_text("did not accept")
    expect(page.locator("#token")).to_have_attribute("aria-invalid", "true")
    assert page.evaluate("sessionStorage.getItem('stream-agent.token')") is None
    # The right token then works, kept for the session only (not remembered on the device).
    log_in(page, TOKEN)
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator(f'.camera[data-camera="{LIVE_CAMERA}"]')).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('stream-agent.token')") == TOKEN
    assert page.evaluate("localStorage.getItem('stream-agent.token')") is None
    # A reload of the tab logs in by itself and keeps the session's questions.
    page.reload()
    expect(page.locator(f'.camera[data-camera="{LIVE_CAMERA}"]')).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()


def test_remember_keeps_the_token_on_the_device(
    context: BrowserContext, daemon: DaemonProcess
) -> None:
    page = context.new_page()
    page.goto(daemon.http_url + "/")
    log_in(page, TOKEN, remember=True)
    expect(page.locator("#logout")).to_be_visible()
    assert page.evaluate("localStorage.getItem('stream-agent.token')") == TOKEN
    assert page.evaluate("sessionStorage.getItem('stream-agent.token')") is None
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("localStorage.getItem('stream-agent.token')") is None


def test_the_keyboard_alone_logs_in_asks_and_opens_evidence(
    context: BrowserContext, daemon: DaemonProcess
) -> None:
    page = context.new_page()
    recorder = Recorder(daemon.http_url).attach(page)
    page.goto(daemon.http_url + "/")
    page.wait_for_selector("#login:not([hidden])")
    page.wait_for_function("document.activeElement && document.activeElement.id === 'token'")
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator(f'.camera[data-camera="{LIVE_CAMERA}"]')).to_be_visible()
    expect(page.locator("#question")).to_be_focused()  # where the login form was
    # The camera's timeline is a slider: move back from live, Enter asks about that moment.
    tab_to(page, None, selector=f'.camera[data-camera="{LIVE_CAMERA}"] .track', key="Shift+Tab")
    page.wait_for_function(
        f"document.querySelector('.camera[data-camera=\"{LIVE_CAMERA}\"] .track')"
        ".getAttribute('aria-valuetext') !== 'no memory yet'"
    )
    page.keyboard.press("End")
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    moment = page.get_attribute(f'.camera[data-camera="{LIVE_CAMERA}"] .track', "aria-valuetext")
    page.keyboard.press("Enter")
    asked = page.locator(".entry").first
    expect(asked.locator(".question")).to_have_text(f"Q: What happened around {moment}?")
    expect(asked).not_to_have_attribute("data-outcome", "streaming", timeout=60_000)
    tab_to(page, "question")
    page.keyboard.type("What moved?")
    page.keyboard.press("Control+Enter")
    newest = page.locator(".entry").first
    expect(newest).not_to_have_attribute("data-outcome", "streaming", timeout=60_000)
    page.wait_for_selector(".entry .thumb img")
    tab_to(page, None, selector=".thumb")
    page.keyboard.press("Enter")
    expect(page.locator("#frame-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#frame-dialog")).to_be_hidden()
    assert recorder.problems() == []
    # The session's history survives a reload of the tab (and the token logs in again).
    page.reload()
    expect(page.locator(".entry")).to_have_count(2)
    expect(page.locator(".entry .question", has_text="What moved?")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()


def tab_to(
    page: Page, element_id: str | None, *, selector: str = "", key: str = "Tab", limit: int = 80
) -> None:
    """Press Tab (or ``key``) until the focus is on ``#element_id`` (or on an element matching
    ``selector``)."""
    test = (
        f"document.activeElement && document.activeElement.id === {element_id!r}"
        if element_id is not None
        else f"document.activeElement && document.activeElement.matches({selector!r})"
    )
    for _ in range(limit):
        if page.evaluate(test):
            return
        page.keyboard.press(key)
    raise AssertionError(f"Tab never reached {element_id or selector}")


def test_no_serious_accessibility_violations(session_page: Session) -> None:
    page, _ = session_page
    answer_id = ensure_answer(page)
    found = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        found += serious_violations(page, scheme)
    page.locator(f"{entry(page, answer_id)} .thumb").first.click()
    expect(page.locator("#frame-dialog")).to_be_visible()
    found += serious_violations(page, "dark, frame dialog open")
    page.keyboard.press("Escape")
    page.emulate_media(color_scheme="light")
    assert found == []


def test_no_serious_accessibility_violations_on_the_login_form(
    context: BrowserContext, daemon: DaemonProcess
) -> None:
    page = context.new_page()
    page.goto(daemon.http_url + "/")
    log_in(page, "wrong")
    expect(page.locator("#token-error")).not_to_be_empty()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "login-error.png"))
    found = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        found += serious_violations(page, scheme)
    assert found == []


def serious_violations(page: Page, label: str) -> list[str]:
    """axe-core's serious and critical findings on the page, one line each."""
    results = Axe().run(page)
    return [
        f"{label}: {v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:5]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_screenshots_at_desktop_and_phone_sizes_light_and_dark(session_page: Session) -> None:
    page, _ = session_page
    ensure_answer(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    written = []
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            path = ARTIFACTS / f"{size_name}-{scheme}.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(path)
            if size_name == "phone":
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= size["width"], f"the page scrolls sideways on a phone ({width} px)"
    page.set_viewport_size(DESKTOP)
    page.emulate_media(color_scheme="light")
    print("screenshots:", *written, sep="\n  ")
    assert all(p.stat().st_size > 10_000 for p in written)


def test_a_stopped_daemon_shows_unreachable_and_the_page_recovers(
    session_page: Session, daemon: DaemonProcess
) -> None:
    page, _ = session_page
    banner = page.locator("#connection")
    assert daemon.stop(signal.SIGTERM) == 0, daemon.log_tail()
    expect(banner).to_have_attribute("data-state", "unreachable", timeout=20_000)
    expect(banner).to_contain_text("unreachable")
    expect(page.locator("#ask-cancel")).to_be_disabled()
    daemon.start()
    expect(banner).to_have_attribute("data-state", "reconnected", timeout=30_000)
    expect(banner).to_contain_text("Reconnected")
    expect(page.locator("#login")).to_be_hidden()
    page.wait_for_function(
        f"document.querySelector('.camera[data-camera=\"{LIVE_CAMERA}\"]')"
        ".dataset.state === 'online'",
        timeout=30_000,
    )
    answer_id = ask(page, "Is anyone there now?")
    assert page.get_attribute(entry(page, answer_id), "data-outcome") in ("stop", "length")
