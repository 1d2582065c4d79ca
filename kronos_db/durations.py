"""Durations as people write them in options and configuration: ``500ms``, ``15m``, ``7d``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "min": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d|w)\s*$")


def parse_duration(text: str) -> timedelta:
    """Parse ``"15m"`` into a timedelta; raise ValueError with a readable reason otherwise.

    A bare ``0`` means zero (for "no timeout" settings).
    """
    if text.strip() == "0":
        return timedelta(0)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit (ms, s, m, h, d, w), e.g. 15m"
        )
    amount, unit = match.groups()
    return float(amount) * _UNITS[unit]


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of ``value`` that ``parse_duration`` reads back."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0"
    for unit, size in (
        ("w", 604_800_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ):
        if total_ms % size == 0:
            return f"{total_ms // size}{unit}"
    return f"{total_ms}ms"


def postgres_interval(value: timedelta) -> str:
    """The value as a PostgreSQL setting in milliseconds (``lock_timeout`` and the like)."""
    return f"{round(value.total_seconds() * 1000)}ms"


def human_duration(value: timedelta) -> str:
    """Two units at most, for people reading a report: ``3d 4h``, ``5m 12s``, ``800ms``."""
    total = value.total_seconds()
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total < 1:
        return f"{sign}{round(total * 1000)}ms"
    parts = []
    remaining = round(total)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
        if len(parts) == 2:
            break
    return sign + " ".join(parts)
