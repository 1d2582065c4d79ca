"""Figures as people and monitoring programs read them: sizes, ages, plain numbers.

One place for each spelling, so that a size reads the same in ``health``, the HTML page and
every table; imports nothing heavy (the CLI's start-up imports it).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Literal

from kronos_db.durations import human_duration

# the unit of a figure a check compares with its thresholds: durations are in seconds
Unit = Literal["seconds", "bytes", "percent", "count"]
UNITS: tuple[Unit, ...] = ("seconds", "bytes", "percent", "count")


def human_size(value: float | None) -> str:
    """Bytes as pg_size_pretty shows them (1024-based: B, kB, MB, GB, TB); empty for None."""
    if value is None:
        return ""
    number = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(number) < 1024:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} TB"


def human_seconds(value: float) -> str:
    """An age or a wait for people: ``3d 4h``, ``5m 12s``, ``800ms``."""
    return human_duration(timedelta(seconds=max(value, 0.0)))


def human_value(value: float | None, unit: Unit) -> str:
    """A figure in its unit, for people: ``1.2 GB``, ``5m 3s``, ``87.5%``, ``1,204``."""
    if value is None:
        return "unknown"
    if unit == "bytes":
        return human_size(value)
    if unit == "seconds":
        return human_seconds(value)
    if unit == "percent":
        return f"{value:.1f}%"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def plain_number(value: float) -> str:
    """A number as monitoring programs parse it: digits, a sign and a point, never an
    exponent (the Monitoring Plugins guidelines' ``[-0-9.]``) and never ``nan``."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    if float(value).is_integer():
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"
