"""Time arithmetic and partition names: everything is UTC, whatever the session's or the
machine's time zone. Names follow pg_partman 4.x (``logs_p2026_11_25``); a partition starting
between two interval boundaries is named by its lower bound to the second.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal

Interval = Literal["hourly", "daily", "weekly", "monthly"]


# date_trunc unit of each interval
TRUNC_UNIT: dict[str, str] = {
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
}


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a tz-aware UTC time")
    return value.astimezone(UTC)


def floor_time(value: datetime, interval: str) -> datetime:
    """The lower bound of the partition holding ``value`` (UTC; weeks start on Monday)."""
    value = _utc(value)
    if interval == "hourly":
        return value.replace(minute=0, second=0, microsecond=0)
    day = value.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "daily":
        return day
    if interval == "weekly":
        return day - timedelta(days=day.weekday())
    if interval == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown interval {interval!r}")


def add_intervals(value: datetime, interval: str, count: int = 1) -> datetime:
    """``value`` moved by ``count`` partitions (``value`` is a partition's lower bound)."""
    if interval == "hourly":
        return value + timedelta(hours=count)
    if interval == "daily":
        return value + timedelta(days=count)
    if interval == "weekly":
        return value + timedelta(weeks=count)
    if interval == "monthly":
        months = value.year * 12 + value.month - 1 + count
        return value.replace(year=months // 12, month=months % 12 + 1)
    raise ValueError(f"unknown interval {interval!r}")


def partition_name(parent: str, lower: datetime, interval: str) -> str:
    """pg_partman 4.x's name for the partition starting at ``lower``: ``logs_p2026_11_25``.

    A lower bound between two interval boundaries (the stop point of a rescue) is named to the
    second, as pg_partman names sub-minute partitions: ``logs_p2026_11_25_101507``.
    """
    lower = _utc(lower)
    if lower != floor_time(lower, interval):
        return f"{parent}_p{lower:%Y_%m_%d_%H%M%S}"
    if interval == "hourly":
        suffix = lower.strftime("%Y_%m_%d_%H%M")
    elif interval == "daily":
        suffix = lower.strftime("%Y_%m_%d")
    elif interval == "weekly":
        iso = lower.isocalendar()
        suffix = f"{iso.year:04d}w{iso.week:02d}"
    elif interval == "monthly":
        suffix = lower.strftime("%Y_%m")
    else:
        raise ValueError(f"unknown interval {interval!r}")
    return f"{parent}_p{suffix}"


def _name_lower_bound(parent: str, name: str, interval: str) -> datetime | None:
    """The lower bound a canonical partition name stands for (None: not one of ours)."""
    suffix = name.removeprefix(f"{parent}_p")
    formats = {
        "hourly": "%Y_%m_%d_%H%M",
        "daily": "%Y_%m_%d",
        "monthly": "%Y_%m",
    }
    try:
        if interval == "weekly":
            match = re.fullmatch(r"(\d{4})w(\d{2})", suffix)
            if not match:
                return None
            return datetime.fromisocalendar(int(match[1]), int(match[2]), 1).replace(tzinfo=UTC)
        lower = datetime.strptime(suffix, formats[interval]).replace(tzinfo=UTC)
    except (ValueError, KeyError):
        return None
    return lower if partition_name(parent, lower, interval) == name else None


def _ceil_second(value: datetime) -> datetime:
    floor = value.replace(microsecond=0)
    return floor if floor == value else floor + timedelta(seconds=1)


def _iso(value: datetime | None) -> str:
    if value is None:
        return "?"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC" if value.second else "%Y-%m-%d %H:%M UTC")
