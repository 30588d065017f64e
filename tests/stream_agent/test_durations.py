"""Durations for the protocol and the config: the units, and refusals instead of overflows."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_agent.durations import (
    MAX_DURATION_S,
    DurationError,
    DurationTooLongError,
    check_seconds,
    looks_like_duration,
    parse_duration,
)

UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def test_units_and_combinations() -> None:
    assert parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400
    assert parse_duration(" 2.5S ") == 2.5
    assert parse_duration("90") == 90
    assert parse_duration("1d 2h") == 93600
    assert parse_duration("250ms") == 0.25


@pytest.mark.parametrize("bad", ["", "m", "10 parsecs", "-5m", "1e3s", "inf", "nan", "1e400s"])
def test_what_is_not_a_duration(bad: str) -> None:
    with pytest.raises(DurationError, match="not a duration"):
        parse_duration(bad)
    assert isinstance(DurationError(""), ValueError)


@pytest.mark.parametrize(
    "huge", [f"{10**12}d", "9" * 400, "9" * 400 + "s", "5300w", f"{10**300}w 1s"]
)
def test_too_long_is_refused_not_overflowed(huge: str) -> None:
    assert looks_like_duration(huge)
    with pytest.raises(DurationTooLongError, match="too long a duration"):
        parse_duration(huge)


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan, 1e300, 10**400])
def test_numbers_beyond_the_bound(number: float) -> None:
    with pytest.raises(DurationTooLongError):
        check_seconds(number)


def test_the_bound_itself_is_accepted() -> None:
    assert check_seconds(MAX_DURATION_S) == MAX_DURATION_S
    assert parse_duration("5200w") == 5200 * 604800


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNITS))), min_size=1, max_size=4
    )
)
def test_parts_add_up(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    expected = sum(n * UNITS[unit] for n, unit in parts)
    if expected <= MAX_DURATION_S:
        assert parse_duration(text) == pytest.approx(expected)
    else:
        with pytest.raises(DurationTooLongError):
            parse_duration(text)


def test_the_protocol_refuses_a_too_long_since_as_a_bad_request() -> None:
    from stream_agent.protocol import Invalid, parse_client_message

    raw = '{"type": "ask", "id": "q", "question": "who?", "since": "1000000000000d"}'
    result = parse_client_message(raw)
    assert isinstance(result, Invalid) and result.code == "bad_request"
    assert "too long a duration" in result.message
