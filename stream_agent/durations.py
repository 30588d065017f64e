"""Durations as people write them (``"10m"``, ``"1h30m"``, ``"90"``), for the protocol and the
config alike.

Units: ms, s/sec, m/min, h, d, w, combinable. A duration is finite and at most
:data:`MAX_DURATION_S` (a century): anything longer names no instant a clock, a ``datetime`` or a
retention budget can hold, so it is refused with a :class:`DurationError` (a ``ValueError``)
rather than failing later with an ``OverflowError`` deep inside a time computation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

MAX_DURATION_S: Final = 100 * 365.25 * 86400.0
"""The longest duration accepted: 100 years, in seconds."""

_UNITS: Final[Mapping[str, float]] = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|d|w)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?\s*(?:ms|sec|min|s|m|h|d|w)\s*)+$")
_PLAIN_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


class DurationError(ValueError):
    """Text that is not a duration (the message is one sentence saying what to write)."""


class DurationTooLongError(DurationError):
    """A duration that is not finite or is longer than :data:`MAX_DURATION_S`."""


def looks_like_duration(text: str) -> bool:
    """Whether ``text`` has the shape of a duration (its value may still be too long)."""
    compact = text.strip().lower()
    return bool(_PLAIN_NUMBER.match(compact) or _WHOLE.match(compact))


def check_seconds(seconds: float, text: object = None) -> float:
    """``seconds`` (a number, an ``int`` of any size included) as a float if it is finite and at
    most :data:`MAX_DURATION_S`, else raise :class:`DurationTooLongError` (naming ``text``, what
    the user wrote, where given). Negative values are left to the caller's own bound."""
    try:
        value = float(seconds)
    except OverflowError:  # an int beyond the float range
        value = math.inf
    if math.isfinite(value) and value <= MAX_DURATION_S:
        return value
    written = repr(text) if text is not None else f"{value!r} seconds"
    raise DurationTooLongError(
        f"{written} is too long a duration; durations are finite and at most 100 years "
        f"({MAX_DURATION_S:.0f} s)"
    )


def parse_duration(text: str) -> float:
    """Parse a duration such as ``"10m"``, ``"1h30m"``, ``"2.5s"`` or ``"90"`` (seconds).

    Units: ms, s/sec, m/min, h, d, w. Raises :class:`DurationError` (a ``ValueError``) with a
    sentence on bad input, :class:`DurationTooLongError` beyond :data:`MAX_DURATION_S`.
    """
    compact = text.strip().lower()
    if _PLAIN_NUMBER.match(compact):
        return check_seconds(float(compact), text)
    if not compact or not _WHOLE.match(compact):
        raise DurationError(
            f"{text!r} is not a duration; write a number with a unit, like '90s', '10m', "
            "'1h30m' or '2d'"
        )
    total = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
    return check_seconds(total, text)
