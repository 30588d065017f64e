"""The events and rules panels in a real headless Chromium against the real daemon (tiny model,
the shared clip replayed live) publishing to a real Mosquitto.

The rule the page adds is gated by OpenCV's HOG person detector with the lowest threshold the
rules allow, so that the model's check (random weights: its yes/no is noise) always passes and
the person gate decides: it fires when a person walks into the clip. The tests run in file order
on one daemon and one logged-in page. Screenshots go to ``tests/artifacts/web/``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.clients.web.browser import ARTIFACTS, DESKTOP, PHONE, Recorder, log_in, natural_sizes
from tests.clients.web.conftest import DEAD_CAMERA, LIVE_CAMERA, run_daemon
from tests.clients.web.test_page import serious_violations, tab_to
from tests.support.daemon import TOKEN, DaemonProcess, http_get, metric
from tests.support.mosquitto import Collector, Mosquitto, Received, mosquitto_problem

pytestmark = pytest.mark.skipif(mosquitto_problem() is not None, reason=str(mosquitto_problem()))

P = "stream_agent"
DISCOVERY = f"homeassistant/device/{P}/config"
RULE = "someone"
Session = tuple[Page, Recorder]


class BrokerWatch:
    """A real MQTT subscriber (``tests.support.mosquitto.Collector``, aiomqtt) on its own event
    loop in a thread, so that the synchronous Playwright tests can read what it received."""

    def __init__(self, broker: Mosquitto, topics: list[str]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._collector = Collector(broker, topics)
        asyncio.run_coroutine_threadsafe(self._collector.__aenter__(), self._loop).result(15)

    def on(self, topic: str) -> list[Received]:
        return [m for m in list(self._collector.messages) if m.topic == topic]

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                seen = [(m.topic, m.payload[:60]) for m in list(self._collector.messages)[-15:]]
                raise AssertionError(f"timed out waiting for {what}; last messages: {seen}")
            time.sleep(0.05)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._collector.__aexit__(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path_factory.mktemp("web-broker"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def watch(broker: Mosquitto) -> Iterator[BrokerWatch]:
    subscriber = BrokerWatch(broker, [f"{P}/#", "homeassistant/#"])
    try:
        yield subscriber
    finally:
        subscriber.close()


@pytest.fixture(scope="module")
def alerts_daemon(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Callable[[str], Path],
    broker: Mosquitto,
    watch: BrokerWatch,
) -> Iterator[DaemonProcess]:
    folder = tmp_path_factory.mktemp("web-alerts")
    yield from run_daemon(
        folder,
        tiny_model_dir("llava_onevision"),
        mqtt={"host": broker.host, "port": broker.port, "backoff": {"initial_s": 0.2, "max_s": 1}},
        alerts={"tick_s": 0.1},
    )


@pytest.fixture(scope="module")
def alerts_page(browser: Browser, alerts_daemon: DaemonProcess) -> Iterator[Session]:
    ctx = browser.new_context(viewport=DESKTOP, color_scheme="light")
    page = ctx.new_page()
    recorder = Recorder(alerts_daemon.http_url).attach(page)
    page.goto(alerts_daemon.http_url + "/")
    log_in(page, TOKEN)
    page.wait_for_selector(f'.camera[data-camera="{LIVE_CAMERA}"][data-state="online"]')
    try:
        yield page, recorder
    finally:
        ctx.close()


def rule_item(name: str) -> str:
    return f'.rule[data-rule="{name}"]'


def fill_rule(page: Page, **fields: str) -> None:
    """Type into the rule form's fields (by the form's control names)."""
    for name, value in fields.items():
        page.fill(f'#rule-form [name="{name}"]', value)


def rule_metrics(daemon: DaemonProcess, rule: str) -> dict[str, float]:
    """The rule's checks that reached the model (``asked``) and its stops per gate."""
    text = http_get(daemon.http_url + "/metrics", TOKEN).text
    out = {"asked": metric(text, "stream_agent_alert_rule_checks_total", rule=rule) or 0.0}
    for gate in ("paused", "inactive_hours", "camera_offline", "no_new_frames", "motion", "person"):
        out[gate] = metric(text, "stream_agent_alert_gate_stops_total", rule=rule, gate=gate) or 0.0
    return out


def test_a_rule_added_on_the_page_fires_and_its_event_shows_live(
    alerts_page: Session, alerts_daemon: DaemonProcess, broker: Mosquitto, watch: BrokerWatch
) -> None:
    page, recorder = alerts_page
    expect(page.locator("#system-facts dd[data-mqtt]")).to_have_attribute("data-mqtt", "online")
    expect(page.locator("#system-facts dd[data-mqtt]")).to_have_text("connected")
    expect(page.locator("#rules-empty")).to_be_visible()
    fill_rule(
        page,
        name=RULE,
        condition="Is a person in the room?",
        check_interval_s="1",
        min_duration_s="0",
        cooldown_s="2s",
        threshold="0.000001",
        motion="",
    )
    page.check("#rule-cameras-some")
    page.check(f'#rule-camera-boxes input[value="{LIVE_CAMERA}"]')
    page.check("#rule-person")
    page.click("#rule-submit")
    expect(page.locator("#rule-form-status")).to_have_text(f"Rule {RULE} added.")
    item = page.locator(rule_item(RULE))
    expect(item.locator(".state")).to_have_text("active")
    expect(item).to_contain_text("Is a person in the room?")
    expect(item).to_contain_text(f"Cameras{LIVE_CAMERA}")
    expect(item).to_contain_text("person detector on")
    expect(page.locator("#rule-name")).to_have_value("")  # the form is ready for the next one

    # Over MQTT: Home Assistant discovery declares the rule's entities ...
    def declared() -> bool:
        found = watch.on(DISCOVERY)
        return bool(found) and f"{P}_{LIVE_CAMERA}_{RULE}" in {
            c.get("unique_id") for c in json.loads(found[-1].payload)["cmps"].values()
        }

    watch.wait_for(declared, "the rule's discovery components")
    # ... and its state topic is retained: a subscriber that comes later still gets it.
    late = BrokerWatch(broker, [f"{P}/{LIVE_CAMERA}/{RULE}"])
    try:
        late.wait_for(lambda: bool(late.on(f"{P}/{LIVE_CAMERA}/{RULE}")), "the retained state")
        state = late.on(f"{P}/{LIVE_CAMERA}/{RULE}")[0]
        assert state.retain and state.payload in (b"ON", b"OFF"), state
    finally:
        late.close()

    # The event arrives on the page live, with its snapshot, and marks the camera's timeline.
    event = page.locator(f'.event[data-rule="{RULE}"]').first
    expect(event).to_be_visible(timeout=60_000)
    expect(event.locator("h3")).to_have_text(f"{RULE} on {LIVE_CAMERA}")
    expect(event.locator(".meta")).to_contain_text("started")
    page.wait_for_function(
        f"[...document.querySelectorAll('.event[data-rule=\"{RULE}\"] .event-shot img')]"
        ".some(i => i.complete && i.naturalWidth > 0)",
        timeout=20_000,
    )
    assert natural_sizes(page, f'.event[data-rule="{RULE}"] .event-shot img')[0][0] > 0
    expect(page.locator("#events-live")).to_contain_text(f"{RULE} on {LIVE_CAMERA}")
    camera = page.locator(f'.camera[data-camera="{LIVE_CAMERA}"]')
    expect(camera.locator(".mark-event").first).to_be_attached()
    assert "Event someone at" in (camera.locator(".mark-event").first.get_attribute("title") or "")
    # The same event is on MQTT.
    watch.wait_for(
        lambda: any(
            json.loads(m.payload)["after"]["rule"] == RULE for m in watch.on(f"{P}/events")
        ),
        "the event on MQTT",
    )
    # The snapshot opens large.
    event.locator(".event-shot .thumb").click()
    expect(page.locator("#frame-dialog")).to_be_visible()
    expect(page.locator("#frame-dialog-title")).to_have_text("Event snapshot")
    page.keyboard.press("Escape")
    assert recorder.problems() == []


def test_ask_about_an_event(alerts_page: Session) -> None:
    page, recorder = alerts_page
    before = page.locator(".entry").count()
    page.locator(f'.event[data-rule="{RULE}"]').first.get_by_role(
        "button", name="Ask about this event"
    ).click()
    expect(page.locator(".entry")).to_have_count(before + 1)
    asked = page.locator(".entry").first
    expect(asked.locator(".question")).to_contain_text(f"the {RULE} event on {LIVE_CAMERA}")
    expect(asked.locator(".meta")).to_contain_text("about an alert event")
    expect(asked).not_to_have_attribute("data-outcome", "streaming", timeout=60_000)
    assert asked.get_attribute("data-outcome") in ("stop", "length"), asked.inner_text()
    # The daemon picked the event's camera and its time range (shown from the ack): from a
    # minute before the event to 10 s after its end, or to now while it is open.
    expect(asked.locator(".meta")).to_contain_text(f"camera {LIVE_CAMERA}")
    expect(asked.locator(".meta")).to_contain_text(re.compile(r"since \S|\S to \S"))
    assert recorder.problems() == []


def test_pausing_a_rule_stops_its_checks(
    alerts_page: Session, alerts_daemon: DaemonProcess
) -> None:
    page, recorder = alerts_page
    item = page.locator(rule_item(RULE))
    item.get_by_role("button", name="Pause").click()
    expect(item.locator(".state")).to_have_text("paused")
    expect(page.locator("#rules-status")).to_have_text(f"Rule {RULE} paused.")
    time.sleep(1.5)  # a check that was already in the engine's queue may still be counted
    paused_at = rule_metrics(alerts_daemon, RULE)
    events_at = page.locator(f'.event[data-rule="{RULE}"]').count()
    time.sleep(4)
    later = rule_metrics(alerts_daemon, RULE)
    assert later["paused"] > paused_at["paused"], (paused_at, later)  # due checks stop at the gate
    assert {k: v for k, v in later.items() if k != "paused"} == {
        k: v for k, v in paused_at.items() if k != "paused"
    }, (paused_at, later)
    assert page.locator(f'.event[data-rule="{RULE}"]').count() == events_at
    assert page.locator(f'.event[data-rule="{RULE}"][data-active="true"]').count() == 0
    item.get_by_role("button", name="Resume").click()
    expect(item.locator(".state")).to_have_text("active")
    assert recorder.problems() == []


def test_a_rule_changed_over_mqtt_shows_on_the_page_without_a_reload(
    alerts_page: Session, broker: Mosquitto, watch: BrokerWatch
) -> None:
    """The page hears of rule changes made elsewhere (``rule_changed`` pushes): a rule added and
    then removed with the real ``mosquitto_pub`` on the command topic."""
    page, recorder = alerts_page
    name = "from-mqtt"

    def command(body: dict[str, object]) -> None:
        subprocess.run(
            ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
             "-t", f"{P}/rules/set", "-m", json.dumps(body)],
            check=True,
            timeout=15,
        )  # fmt: skip

    rule = {"name": name, "cameras": [LIVE_CAMERA], "condition": "Is a door open?"}
    command({"op": "add", "rule": rule})
    watch.wait_for(
        lambda: any(json.loads(m.payload).get("ok") for m in watch.on(f"{P}/rules/result")),
        "the add's reply",
    )
    expect(page.locator(rule_item(name))).to_be_visible(timeout=10_000)
    command({"op": "remove", "name": name})
    expect(page.locator(rule_item(name))).to_have_count(0, timeout=10_000)
    assert recorder.problems() == []


def test_the_daemons_validation_errors_show_next_to_their_fields(alerts_page: Session) -> None:
    page, recorder = alerts_page
    fill_rule(page, name="bad-one", condition="Is the door open?", cooldown_s="abc")
    page.click("#rule-submit")
    error = page.locator("#rule-cooldown-s-error")
    expect(error).to_contain_text("'abc' is not a duration")
    expect(page.locator("#rule-cooldown-s")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#rule-cooldown-s")).to_be_focused()
    expect(page.locator("#rule-form-error")).to_contain_text("one field needs a change")
    assert "cooldown-s-error" in (page.get_attribute("#rule-cooldown-s", "aria-describedby") or "")
    # Fixed, with a bad time range instead: the error moves to that field.
    fill_rule(page, cooldown_s="30", active_hours="22:00-25:00")
    page.click("#rule-submit")
    expect(page.locator("#rule-active-hours-error")).to_contain_text("not a time of day")
    expect(page.locator("#rule-active-hours")).to_have_attribute("aria-invalid", "true")
    expect(error).to_be_empty()
    expect(page.locator("#rule-cooldown-s")).not_to_have_attribute("aria-invalid", "true")
    fill_rule(page, active_hours="", threshold="1.5")
    page.click("#rule-submit")
    expect(page.locator("#rule-threshold-error")).to_contain_text("less than 1")
    # "These cameras" with none ticked: the daemon's cameras error, next to the camera choice.
    fill_rule(page, threshold="0.5")
    page.check("#rule-cameras-some")
    page.click("#rule-submit")
    expect(page.locator("#rule-cameras-error")).to_contain_text("at least one camera")
    expect(page.locator("#rule-cameras-some")).to_have_attribute("aria-invalid", "true")
    page.check("#rule-cameras-all")
    expect(page.locator(rule_item("bad-one"))).to_have_count(0)
    fill_rule(page, name="", condition="", threshold="0.5")  # leave the form empty again
    assert recorder.problems() == []


def test_the_history_filters_by_camera_rule_and_time(alerts_page: Session) -> None:
    page, recorder = alerts_page
    events = page.locator(".event")
    expect(events.first).to_be_visible()
    page.select_option("#events-rule", RULE)
    expect(page.locator("#events-status")).to_contain_text("shown")
    assert events.count() >= 1
    assert set(events.evaluate_all("els => els.map(e => e.dataset.rule)")) == {RULE}
    page.select_option("#events-camera", DEAD_CAMERA)
    expect(events).to_have_count(0)
    expect(page.locator("#events-empty")).to_be_visible()
    page.select_option("#events-camera", LIVE_CAMERA)
    page.select_option("#events-since", "900")
    expect(events.first).to_be_visible()
    page.select_option("#events-camera", "")
    page.select_option("#events-rule", "")
    page.select_option("#events-since", "86400")
    expect(events.first).to_be_visible()
    assert recorder.problems() == []


def test_rules_by_keyboard_alone_edit_and_remove(alerts_page: Session, watch: BrokerWatch) -> None:
    page, recorder = alerts_page
    page.locator("#rule-name").focus()
    page.keyboard.type("parcel")
    tab_to(page, "rule-condition")
    page.keyboard.type("Is there a parcel on the table?")
    tab_to(page, "rule-paused")
    page.keyboard.press("Space")
    tab_to(page, "rule-submit")
    page.keyboard.press("Enter")
    item = page.locator(rule_item("parcel"))
    expect(item.locator(".state")).to_have_text("paused")
    expect(item).to_contain_text("all cameras")
    # Edit it: the form takes its values; the name stays.
    tab_to(page, None, selector=f"{rule_item('parcel')} [data-action=edit]", key="Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#rule-condition")).to_be_focused()
    expect(page.locator("#rule-name")).to_have_value("parcel")
    expect(page.locator("#rule-submit")).to_have_text("Save the changes")
    page.keyboard.press("Control+a")
    page.keyboard.type("Is a parcel on the floor?")
    tab_to(page, "rule-submit")
    page.keyboard.press("Enter")
    expect(item).to_contain_text("Is a parcel on the floor?")
    expect(page.locator("#rule-submit")).to_have_text("Add the rule")
    expect(item.locator("[data-action=edit]")).to_be_focused()
    # Remove it, with the confirmation, from the keyboard.
    page.keyboard.press("Tab")
    expect(item.locator("[data-action=remove]")).to_be_focused()
    page.keyboard.press("Enter")
    expect(item.locator("[data-action=keep]")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.locator(rule_item("parcel"))).to_have_count(0)
    expect(page.locator("#rules-status")).to_have_text("Rule parcel removed.")

    # Its Home Assistant entities are withdrawn (components sent as their platform only).
    def withdrawn() -> bool:
        found = watch.on(DISCOVERY)
        if not found:
            return False
        cmps = json.loads(found[-1].payload)["cmps"]
        return all(
            set(c) == {"p"} for k, c in cmps.items() if "parcel" in k or "parcel" in str(c)
        ) and any("parcel" in k for k in cmps)

    watch.wait_for(withdrawn, "the removed rule's discovery")
    assert recorder.problems() == []


def test_no_serious_accessibility_violations_in_the_alert_panels(alerts_page: Session) -> None:
    page, _ = alerts_page
    # A field error on show, so that the error state is scanned too.
    fill_rule(page, name="Not A Name", condition="Is it?")
    page.click("#rule-submit")
    expect(page.locator("#rule-name-error")).not_to_be_empty()
    found = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        found += serious_violations(page, scheme)
    page.emulate_media(color_scheme="light")
    assert found == []


def test_screenshots_of_the_alert_panels(alerts_page: Session) -> None:
    page, _ = alerts_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    written = []
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            path = ARTIFACTS / f"alerts-{size_name}-{scheme}.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(path)
            if size_name == "phone":
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= size["width"], f"the page scrolls sideways on a phone ({width} px)"
        for panel in ("events", "rules"):
            path = ARTIFACTS / f"alerts-{size_name}-{panel}.png"
            page.locator(f"#{panel}").screenshot(path=str(path))
            written.append(path)
    page.set_viewport_size(DESKTOP)
    page.emulate_media(color_scheme="light")
    print("screenshots:", *written, sep="\n  ")
    assert all(p.stat().st_size > 5_000 for p in written)
