"""The MQTT link against a real Mosquitto: availability, last will, QoS 1 order, the outbox
across a broker outage and a daemon restart, refused credentials."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_agent.alerts.config import BackoffConfig, MqttConfig, MqttSecrets
from stream_agent.alerts.mqtt import MqttLink
from stream_agent.alerts.outbox import Outbox
from tests.support.mosquitto import Collector, Mosquitto

ROOT = Path(__file__).resolve().parents[3]
FAST = BackoffConfig(initial_s=0.1, max_s=0.5, jitter=0.2)


def config(broker: Mosquitto, **kw: object) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, backoff=FAST, **kw)  # type: ignore[arg-type]


async def wait_state(link: MqttLink, state: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while link.state != state:
        assert time.monotonic() < deadline, f"link is {link.state}, not {state}"
        await asyncio.sleep(0.02)


def payloads(col: Collector, topic: str) -> list[bytes]:
    return [m.payload for m in col.on(topic)]


async def test_online_on_connect_offline_on_clean_stop(broker: Mosquitto, tmp_path: Path) -> None:
    link = MqttLink(config(broker), Outbox(tmp_path / "o.sqlite"))
    async with Collector(broker, ["stream_agent/available"]) as col:
        task = asyncio.create_task(link.run())
        await wait_state(link, "online")
        await col.wait_for(lambda m: b"online" in payloads(col, "stream_agent/available"))
        await link.stop()
        await asyncio.wait_for(task, 10)
        await col.wait_for(lambda m: payloads(col, "stream_agent/available")[-1:] == [b"offline"])
    assert link.state == "stopped"
    # retained: a late subscriber sees the last word
    async with Collector(broker, ["stream_agent/available"]) as late:
        await late.wait_for(lambda m: bool(late.on("stream_agent/available")))
        last = late.on("stream_agent/available")[-1]
        assert (last.payload, last.retain) == (b"offline", True)


CLIENT_SCRIPT = """
import asyncio, sys
from pathlib import Path
from stream_agent.alerts.config import MqttConfig
from stream_agent.alerts.mqtt import MqttLink
from stream_agent.alerts.outbox import Outbox
async def main():
    link = MqttLink(MqttConfig(host="127.0.0.1", port=int(sys.argv[1]), keepalive_s=5),
                    Outbox(None))
    task = asyncio.create_task(link.run())
    while link.state != "online":
        await asyncio.sleep(0.02)
    print("online", flush=True)
    await task
asyncio.run(main())
"""


async def test_last_will_offline_when_the_process_dies(broker: Mosquitto) -> None:
    async with Collector(broker, ["stream_agent/available"]) as col:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT_SCRIPT, str(broker.port)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            assert line.strip() == b"online"
            await col.wait_for(
                lambda m: payloads(col, "stream_agent/available")[-1:] == [b"online"]
            )
            proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
            proc.wait(10)
            await col.wait_for(
                lambda m: payloads(col, "stream_agent/available")[-1:] == [b"offline"]
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_events_arrive_in_order_with_qos1(broker: Mosquitto, tmp_path: Path) -> None:
    link = MqttLink(config(broker), Outbox(tmp_path / "o.sqlite"))
    async with Collector(broker, ["stream_agent/events"]) as col:
        task = asyncio.create_task(link.run())
        for i in range(200):
            link.publish_event("stream_agent/events", json.dumps({"n": i}).encode())
        await col.wait_for(lambda m: len(m) >= 200)
        assert [json.loads(p)["n"] for p in payloads(col, "stream_agent/events")] == list(
            range(200)
        )
        assert len(link.status().to_json()) and link.status().outbox == 0
        await link.stop()
        await task


def _numbers(col: Collector) -> list[int]:
    """Event numbers in arrival order, a redelivered duplicate (at least once) kept once."""
    seen: list[int] = []
    for p in payloads(col, "stream_agent/events"):
        n = json.loads(p)["n"]
        if n not in seen:
            seen.append(n)
    return seen


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_broker_killed_and_restarted_loses_nothing(
    broker: Mosquitto, tmp_path: Path, how: str
) -> None:
    """Events raised before, during and after an outage (the broker stopped with SIGTERM or
    killed with SIGKILL) arrive once each, in order; availability comes back online."""
    link = MqttLink(config(broker), Outbox(tmp_path / "o.sqlite", max_messages=1000))
    # a persistent subscriber session: the broker keeps what arrives while it is away
    async with Collector(
        broker,
        ["stream_agent/events", "stream_agent/available"],
        client_id="t-sub",
        persistent=True,
    ) as col:
        task = asyncio.create_task(link.run())
        await wait_state(link, "online")
        n = 0
        for _ in range(20):
            link.publish_event("stream_agent/events", json.dumps({"n": n}).encode())
            n += 1
        await col.wait_for(lambda m: len(_numbers(col)) == 20)
        if how == "kill":
            await asyncio.sleep(1.5)  # the broker autosaves sessions every second
            broker.kill()
        else:
            broker.stop()
        await wait_state(link, "offline")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:  # events keep coming while the broker is away
            link.publish_event("stream_agent/events", json.dumps({"n": n}).encode())
            n += 1
            await asyncio.sleep(0.1)
        assert link.status().outbox >= 25
        broker.start()
        await wait_state(link, "online", 15)
        for _ in range(10):
            link.publish_event("stream_agent/events", json.dumps({"n": n}).encode())
            n += 1
        await col.wait_for(lambda m: len(_numbers(col)) == n, 20)
        assert _numbers(col) == list(range(n))
        assert link.status().connects == 2 and link.status().outbox_dropped == 0
        await col.wait_for(lambda m: payloads(col, "stream_agent/available")[-1:] == [b"online"])
        await link.stop()
        await task


async def test_outbox_left_by_a_stopped_daemon_is_delivered_by_the_next(
    broker: Mosquitto, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.sqlite"
    broker.stop()
    first = MqttLink(config(broker), Outbox(path))
    task = asyncio.create_task(first.run())
    for n in range(15):
        first.publish_event("stream_agent/events", json.dumps({"n": n}).encode())
    await asyncio.sleep(0.5)
    assert first.state == "offline"
    await first.stop()
    await asyncio.wait_for(task, 10)
    broker.start()
    async with Collector(broker, ["stream_agent/events"]) as col:
        second = MqttLink(config(broker), Outbox(path))
        assert second.status().outbox == 15
        task = asyncio.create_task(second.run())
        await col.wait_for(lambda m: len(_numbers(col)) == 15)
        assert _numbers(col) == list(range(15))
        await second.stop()
        await task


async def test_retained_state_republished_when_home_assistant_comes_online(
    broker: Mosquitto, tmp_path: Path
) -> None:
    link = MqttLink(config(broker), Outbox(None))
    link.set_retained("stream_agent/cam/rule", b"OFF")
    task = asyncio.create_task(link.run())
    async with Collector(broker, ["stream_agent/cam/rule"]) as col:
        await col.wait_for(lambda m: len(col.on("stream_agent/cam/rule")) == 1)
        async with Collector(broker, []):
            import aiomqtt

            async with aiomqtt.Client(broker.host, broker.port) as ha:
                await ha.publish("homeassistant/status", b"online", qos=1)
        await col.wait_for(lambda m: len(col.on("stream_agent/cam/rule")) == 2)
        link.set_retained("stream_agent/cam/rule", None)  # cleared: an empty retained message
        await col.wait_for(lambda m: col.on("stream_agent/cam/rule")[-1].payload == b"")
    await link.stop()
    await task


async def test_wrong_credentials_show_refused_and_block_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = Mosquitto(tmp_path / "auth", users={"agent": "right-pw"})
    broker.start()
    try:
        cfg = config(broker, username="agent", password_env="PW")
        box = tmp_path / "outbox.sqlite"
        link = MqttLink(cfg, Outbox(box), secrets=MqttSecrets(password="wrong-pw"))
        task = asyncio.create_task(link.run())
        await wait_state(link, "refused")
        t0 = time.perf_counter()
        for n in range(100):
            link.publish_event("stream_agent/events", b"{}")
            link.set_retained("stream_agent/cam/state", str(n).encode())
            link.publish("stream_agent/stats", b"{}")
        assert time.perf_counter() - t0 < 1.0  # enqueueing only, no waiting on the broker
        status = link.status()
        assert status.state == "refused" and "pw" not in status.reason
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1  # one line per state change, not one per attempt
        assert status.outbox == 100 and status.transient_dropped == 100
        await link.stop()
        await asyncio.wait_for(task, 10)
        # with the right password, what queued up meanwhile is delivered
        async with Collector(
            broker, ["stream_agent/events"], username="agent", password="right-pw"
        ) as col:
            good = MqttLink(cfg, Outbox(box), secrets=MqttSecrets(password="right-pw"))
            task = asyncio.create_task(good.run())
            await col.wait_for(lambda m: len(col.on("stream_agent/events")) >= 100)
            await good.stop()
            await task
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "wrong-pw" not in logged and "right-pw" not in logged
    finally:
        broker.kill()


@pytest.mark.parametrize("prefix", ["home/agent"])
async def test_prefix_is_configurable(broker: Mosquitto, prefix: str) -> None:
    link = MqttLink(config(broker, prefix=prefix), Outbox(None))
    async with Collector(broker, [f"{prefix}/available"]) as col:
        task = asyncio.create_task(link.run())
        await col.wait_for(lambda m: payloads(col, f"{prefix}/available")[-1:] == [b"online"])
        await link.stop()
        await task


async def test_outbox_overflow_while_offline_is_counted(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "late")  # not started: the broker is unreachable
    link = MqttLink(config(broker), Outbox(tmp_path / "o.sqlite", max_messages=10))
    task = asyncio.create_task(link.run())
    for n in range(25):
        link.publish_event("stream_agent/events", json.dumps({"n": n}).encode())
    await wait_state(link, "offline")
    status = link.status()
    assert (status.outbox, status.outbox_dropped) == (10, 15)
    broker.start()
    try:
        async with Collector(broker, ["stream_agent/events"]) as col:
            await col.wait_for(lambda m: len(_numbers(col)) == 10, 15)
            assert _numbers(col) == list(range(15, 25))  # the newest were kept, in order
    finally:
        await link.stop()
        await task
        broker.kill()


def _make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (EC keys), made with the openssl command."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return ca, cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is missing")
async def test_tls_to_the_broker(tmp_path: Path) -> None:
    ca, cert, key = _make_certs(tmp_path / "certs")
    broker = Mosquitto(tmp_path / "tls", tls=(ca, cert, key))
    broker.start()
    try:
        good = MqttLink(config(broker, tls={"ca_file": ca}), Outbox(None))
        task = asyncio.create_task(good.run())
        await wait_state(good, "online")
        await good.stop()
        await task
        # a CA that did not sign the broker's certificate: refused in the handshake
        wrong = MqttLink(config(broker, tls={"ca_file": cert}), Outbox(None))
        task = asyncio.create_task(wrong.run())
        await wait_state(wrong, "offline")
        assert "certificate" in wrong.status().reason.lower()
        await wrong.stop()
        await task
    finally:
        broker.kill()


async def test_the_latest_retained_value_always_reaches_the_broker(
    broker: Mosquitto, tmp_path: Path
) -> None:
    link = MqttLink(config(broker), Outbox(None))
    task = asyncio.create_task(link.run())
    await wait_state(link, "online")
    async with Collector(broker, ["stream_agent/cam/state"]) as col:
        for n in range(300):
            link.set_retained("stream_agent/cam/state", str(n).encode())
            if n % 7 == 0:
                await asyncio.sleep(0)  # let the sender run in between
        await col.wait_for(
            lambda m: (
                col.on("stream_agent/cam/state")[-1:] != []
                and col.on("stream_agent/cam/state")[-1].payload == b"299"
            )
        )
        got = [int(m.payload) for m in col.on("stream_agent/cam/state")]
        assert got == sorted(got)
    await link.stop()
    await task
