"""Helpers for the web client's tests: Debian's headless Chromium driven by Playwright.

The browser is Debian's ``/usr/bin/chromium`` (installed by ``scripts/setup``), never a browser
that Playwright downloads. As root it needs ``--no-sandbox``; the networking flags keep it from
reaching out on its own (this machine refuses outside connections, and the page must need none).
``Recorder`` collects what a page must not do: console errors, uncaught exceptions, failed
requests, HTTP errors and requests that leave the daemon's origin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Page, Request, Response

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[3] / "tests" / "artifacts" / "web"
"""Where screenshots go (ignored by git; CI keeps it as the test run's artifact)."""

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass
class Recorder:
    """What a page did wrong, as lines of text (empty lists: nothing wrong)."""

    origin: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    http_errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Recorder:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        page.on("request", self._request)
        return self

    def problems(self) -> list[str]:
        return [
            *(f"console error: {m}" for m in self.console_errors),
            *(f"uncaught: {m}" for m in self.page_errors),
            *(f"request failed: {m}" for m in self.failed_requests),
            *(f"HTTP error: {m}" for m in self.http_errors),
            *(f"outside request: {m}" for m in self.foreign_requests),
        ]

    def clear(self) -> None:
        for found in (
            self.console_errors,
            self.page_errors,
            self.failed_requests,
            self.http_errors,
            self.foreign_requests,
        ):
            found.clear()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console_errors.append(f"{message.type}: {message.text}")

    def _failed(self, request: Request) -> None:
        self.failed_requests.append(f"{request.url} ({request.failure})")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.http_errors.append(f"{response.status} {response.url}")

    def _request(self, request: Request) -> None:
        url = request.url
        own = url.startswith((self.origin + "/", "blob:", "data:"))
        if not own:
            self.foreign_requests.append(url)


def log_in(page: Page, token: str, *, remember: bool = False) -> None:
    """Type the token into the login form and send it."""
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", token)
    if remember:
        page.check("#remember")
    page.click("#login-form button[type=submit]")


FINISHED = ".entry:not([data-outcome=streaming])"


def ask(page: Page, question: str, *, timeout_ms: float = 60_000) -> str:
    """Type and send a question; wait for its answer to end; returns the entry's id."""
    before = page.locator(".entry").count()
    page.fill("#question", question)
    page.click("#ask-send")
    page.wait_for_function(f"document.querySelectorAll('.entry').length > {before}")
    entry = page.locator(".entry").first
    entry_id = entry.get_attribute("data-id")
    assert entry_id is not None
    page.wait_for_selector(
        f'.entry[data-id="{entry_id}"]:not([data-outcome=streaming])', timeout=timeout_ms
    )
    return entry_id


def natural_sizes(page: Page, selector: str) -> list[tuple[int, int]]:
    """(naturalWidth, naturalHeight) of every image that ``selector`` matches."""
    sizes = page.eval_on_selector_all(
        selector, "els => els.map(e => [e.complete ? e.naturalWidth : 0, e.naturalHeight])"
    )
    return [(int(w), int(h)) for w, h in sizes]
