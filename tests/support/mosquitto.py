"""A real Mosquitto broker for the tests: ``/usr/sbin/mosquitto`` (Debian ``mosquitto``) as a
subprocess on a free loopback port, with a generated config.

``Mosquitto(folder).start()`` serves anonymous clients; ``users={"name": "password"}`` makes a
password file with ``mosquitto_passwd`` and refuses everyone else. ``persistence=True`` keeps
sessions and retained messages across a clean ``stop()``/``start()`` (a persistent subscriber
then misses nothing while the broker was down). ``kill()`` is SIGKILL (nothing saved); ``start``
again serves on the same port. :class:`Collector` is a test subscriber (aiomqtt) that records
every message and reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")


def mosquitto_problem() -> str | None:
    """Why the broker cannot run here, or None if it can."""
    if not MOSQUITTO.exists():
        return f"{MOSQUITTO} is missing (scripts/setup installs the Debian package mosquitto)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    def __init__(
        self,
        folder: Path,
        *,
        users: dict[str, str] | None = None,
        persistence: bool = False,
        port: int | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._users = users
        self._persistence = persistence
        self._tls = tls  # (CA, server certificate, server key)
        self._proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "mosquitto.log"

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 100000",
        ]
        if self._tls is not None:
            ca, cert, key = self._tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        if self._persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.folder}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        if self._users:
            pw = self.folder / "passwd"
            pw.unlink(missing_ok=True)
            for i, (name, password) in enumerate(self._users.items()):
                flags = ["-c"] if i == 0 else []
                subprocess.run(
                    [str(MOSQUITTO_PASSWD), "-b", *flags, str(pw), name, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        conf = self.folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout_s: float = 10.0) -> None:
        assert self._proc is None or self._proc.poll() is not None, "already running"
        conf = self._write_config()
        self._proc = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited at start: {err} {self.read_log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.read_log()}")

    def read_log(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(sig)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)

    def stop(self) -> None:
        """SIGTERM: a clean exit (persistence, if on, is saved)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without saving anything."""
        self._signal(signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    t: float


class Collector:
    """Subscribes to ``topics`` and records every message; reconnects until closed.

    ``client_id`` with ``persistent=True`` keeps a broker session (QoS 1 messages sent while
    this subscriber was away are delivered when it is back, if the broker kept the session).
    """

    def __init__(
        self,
        broker: Mosquitto,
        topics: list[str],
        *,
        client_id: str | None = None,
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.broker = broker
        self.topics = topics
        self.client_id = client_id
        self.persistent = persistent
        self.username = username
        self.password = password
        self.messages: list[Received] = []
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        import aiomqtt

        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=self.client_id,
                    clean_session=not self.persistent,
                    username=self.username,
                    password=self.password,
                ) as client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self.connected.set()
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else b""
                        self.messages.append(Received(str(m.topic), payload, m.retain, time.time()))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.1)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float = 10.0
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.messages):
            if time.monotonic() > deadline:
                seen = [(m.topic, m.payload[:80]) for m in self.messages[-20:]]
                raise AssertionError(f"timed out waiting; last messages: {seen}")
            await asyncio.sleep(0.05)
