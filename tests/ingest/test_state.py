"""Watching a source's state: subscriptions, listeners, waiting, closing."""

from __future__ import annotations

import asyncio

import pytest

from ingest import (
    BackoffPolicy,
    IngestOptions,
    SourceSpec,
    SourceState,
    StateChange,
    open_source,
)

QUICK = IngestOptions(
    open_timeout_s=2.0, read_timeout_s=2.0, backoff=BackoffPolicy(initial_s=0.05, max_s=0.2)
)


async def test_watching_a_live_source_that_never_connects(free_port: int) -> None:
    heard: list[StateChange] = []
    source = open_source(SourceSpec.parse(f"rtsp://127.0.0.1:{free_port}/x", "door"), QUICK)
    assert source.state is SourceState.CONNECTING and source.info is None
    remove = source.add_state_listener(heard.append)
    await source.start()
    changes = source.state_changes(include_history=True)
    offline = await source.wait_for_state(SourceState.OFFLINE, timeout=10)
    assert offline.previous is SourceState.CONNECTING and offline.source_id == "door"
    assert await source.wait_for_state(SourceState.OFFLINE, timeout=0) == offline  # already there
    with pytest.raises(TimeoutError):
        await source.wait_for_state(SourceState.ONLINE, timeout=0.3)
    remove()
    await source.aclose()
    states = [c.state async for c in changes]  # ends by itself after "ended"
    assert states == [SourceState.CONNECTING, SourceState.OFFLINE, SourceState.ENDED]
    assert [c.state for c in heard] == [SourceState.CONNECTING, SourceState.OFFLINE]
    assert source.history[-1].reason == "closed"
    # A subscriber arriving after the end gets the history, or nothing.
    assert [c.state async for c in source.state_changes()] == []
    late = [c.state async for c in source.state_changes(include_history=True)]
    assert late == states
    counters = source.counters()
    assert counters.connect_failures >= 1 and counters.decoded == 0
    assert counters.queue_capacity == 1  # live: newest frame wins


async def test_closing_before_start() -> None:
    source = open_source("rtsp://127.0.0.1:9/x")
    await source.aclose()
    assert source.state is SourceState.ENDED


async def test_failing_listener_does_not_stop_the_others(free_port: int) -> None:
    heard: list[SourceState] = []

    def broken(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    source = open_source(f"rtsp://127.0.0.1:{free_port}/x", QUICK, on_state_change=broken)
    source.add_state_listener(lambda c: heard.append(c.state))
    async with source:
        await source.wait_for_state(SourceState.OFFLINE, timeout=10)
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert heard == [SourceState.CONNECTING, SourceState.OFFLINE, SourceState.ENDED]
