"""Fixtures of the alerts tests: a real Mosquitto broker per test (``broker``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, mosquitto_problem


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    problem = mosquitto_problem()
    if problem is not None:
        pytest.skip(problem)
    b = Mosquitto(tmp_path / "broker", persistence=True)
    b.start()
    yield b
    b.kill()
