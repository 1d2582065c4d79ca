"""What monitoring programs read: the Nagios plugin output, JSON, the Prometheus exposition.

Every monitoring command (``health``, ``partitions status``, ``backup status``) renders its
answers through these functions, for the program that consumes them:

* **Nagios / Icinga** (:func:`nagios_output`), per the Monitoring Plugins development
  guidelines: ``SERVICE STATUS: text | perfdata`` on the first line, problems worst first,
  the text free of ``|`` and line breaks, performance data for every figure a check measured
  (``'label'=value[UOM];warn;crit;min;max``, ranges as the guidelines write them, ``U`` for a
  figure that could not be measured); then one line per check. Also when the command could
  not run at all (:func:`nagios_unknown`): Nagios reads stdout only.
* **JSON** (:func:`health_document`): ``schema_version`` 1, documented by the JSON Schema
  ``docs/health.schema.json``; numbers are numbers, durations seconds, thresholds values.
* **Prometheus** (:func:`prometheus_text`): the text exposition format that is also valid
  OpenMetrics (``# EOF``), one unit per metric family, and ``kronos_health_up`` saying
  whether health could run at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from kronos_db.checks import CheckResult, Metric, Status, worst
from kronos_db.units import Unit, human_value, plain_number

SCHEMA_VERSION = 1

# ----------------------------------------------------------------------------- Nagios

_NAGIOS_UOM: dict[Unit, str] = {"seconds": "s", "bytes": "B", "percent": "%", "count": ""}
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_FIRST_LINE_PROBLEMS = 3
_SUMMARY_WIDTH = 200


def sanitize(text: str, width: int = 0) -> str:
    """One line of plugin text: no ``|`` (it starts the performance data), no line break."""
    text = _LINE_BREAKS.sub(" ", text).replace("|", "¦").strip()
    if width and len(text) > width:
        text = text[: width - 1].rstrip() + "…"
    return text


def _label(name: str) -> str:
    # the guidelines: quote a label with anything but letters, digits and _; no = nor '
    cleaned = name.replace("=", "_").replace("'", "_")
    return cleaned if re.fullmatch(r"[A-Za-z0-9_]+", cleaned) else f"'{cleaned}'"


def perfdata(metrics: Iterable[Metric]) -> str:
    """``label=value[UOM];warn;crit;min;max`` for each metric, space-separated."""
    items = []
    for metric in metrics:
        uom = _NAGIOS_UOM[metric.unit]
        value = "U" if metric.value is None else plain_number(metric.value) + uom
        threshold = metric.threshold
        warn = threshold.nagios_range(threshold.warning) if threshold else ""
        crit = threshold.nagios_range(threshold.critical) if threshold else ""
        maximum = "100" if metric.unit == "percent" else ""
        items.append(f"{_label(metric.name)}={value};{warn};{crit};0;{maximum}")
    return " ".join(items)


def worst_first(results: Sequence[CheckResult]) -> list[CheckResult]:
    """The checks in order of severity (CRITICAL, WARNING, UNKNOWN, OK), stable otherwise."""
    return sorted(results, key=lambda result: -result.status.severity)


def nagios_output(
    service: str,
    results: Sequence[CheckResult],
    *,
    status: Status | None = None,
    ok_text: str = "",
    long_output: bool = True,
) -> str:
    """The plugin output: the first line, then one line per check (worst first)."""
    overall = status if status is not None else worst([r.status for r in results])
    ordered = worst_first(results)
    problems = [r for r in ordered if r.status is not Status.OK]
    if len(results) == 1:
        text = sanitize(results[0].summary, 4 * _SUMMARY_WIDTH)
    elif problems:
        shown = [f"{r.name}: {sanitize(r.summary, _SUMMARY_WIDTH)}" for r in problems]
        more = len(shown) - _FIRST_LINE_PROBLEMS
        text = "; ".join(shown[:_FIRST_LINE_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
    else:
        text = ok_text or f"all {len(results)} checks OK"
    data = perfdata(metric for result in results for metric in result.metrics)
    lines = [f"{service} {overall.name}: {text}" + (f" | {data}" if data else "")]
    if long_output:
        for result in ordered:
            hint = f" (hint: {sanitize(result.hint)})" if result.hint else ""
            lines.append(f"{result.status.name} {result.name}: {sanitize(result.summary)}{hint}")
    return "\n".join(lines) + "\n"


def nagios_unknown(service: str, message: str) -> str:
    """The one line of a check that could not run at all (exit 3)."""
    return f"{service} UNKNOWN: {sanitize(message)}\n"


def levels_text(result: CheckResult) -> str:
    """The levels of a check's figures, in their units: ``5m / 30m``, ``< 95.0% / < 80.0%``."""
    shown = []
    for metric in result.metrics:
        threshold = metric.threshold
        if threshold is None or (threshold.warning is None and threshold.critical is None):
            continue
        mark = "below " if threshold.direction == "below" else "above "
        levels = [
            f"{mark}{human_value(level, metric.unit)}" if level is not None else "-"
            for level in (threshold.warning, threshold.critical)
        ]
        shown.append(" / ".join(levels))
    return "; ".join(shown)


# ----------------------------------------------------------------------------- JSON


def metric_document(metric: Metric) -> dict[str, Any]:
    threshold = metric.threshold
    return {
        "name": metric.name,
        "value": metric.value,
        "unit": metric.unit,
        "warning": threshold.warning if threshold else None,
        "critical": threshold.critical if threshold else None,
        "direction": threshold.direction if threshold else None,
    }


def check_document(result: CheckResult) -> dict[str, Any]:
    """One check as documented in docs/health.schema.json (``$defs.check``)."""
    return {
        "name": result.name,
        "title": result.title,
        "status": result.status.name,
        "exit_code": int(result.status),
        "summary": result.summary,
        "hint": result.hint,
        "seconds": round(result.seconds, 6),
        "metrics": [metric_document(metric) for metric in result.metrics],
        "findings": [
            {
                "subject": finding.subject,
                "detail": finding.detail,
                "fix": finding.fix,
                "query": finding.query,
            }
            for finding in result.findings
        ],
    }


def health_document(
    command: str,
    database: str,
    checked_at: datetime,
    results: Sequence[CheckResult],
    *,
    status: Status | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The JSON document of a monitoring command (docs/health.schema.json)."""
    overall = status if status is not None else worst([r.status for r in results])
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "database": database,
        "checked_at": checked_at.isoformat(),
        "status": overall.name,
        "exit_code": int(overall),
        "error": error,
        "checks": [check_document(result) for result in results],
    }


# ----------------------------------------------------------------------------- Prometheus

_FAMILY_OF_UNIT: dict[Unit, tuple[str, str]] = {
    # unit: (family suffix, OpenMetrics unit); percentages are exported as ratios (0..1)
    "seconds": ("_seconds", "seconds"),
    "bytes": ("_bytes", "bytes"),
    "percent": ("_ratio", "ratio"),
    "count": ("", ""),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _scaled(metric: Metric, value: float) -> float:
    return value / 100 if metric.unit == "percent" else value


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, help_text: str, samples: list[tuple[str, float]], unit: str = ""
    ) -> None:
        if not samples:
            return
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} gauge")
        if unit:
            self.lines.append(f"# UNIT {name} {unit}")
        self.lines += [f"{name}{labels} {plain_number(value)}" for labels, value in samples]

    def text(self) -> str:
        return "\n".join([*self.lines, "# EOF"]) + "\n"


def prometheus_text(database: str, results: Sequence[CheckResult], *, up: bool = True) -> str:
    """The report as the Prometheus text exposition (also valid OpenMetrics).

    ``kronos_health_up`` is 1 when health ran (whatever it found), 0 when it could not run at
    all; then only that series is written. Each figure goes to the family of its unit:
    ``kronos_health_value_seconds``, ``_bytes``, ``_ratio`` (percentages / 100) and
    ``kronos_health_value`` (counts), with ``kronos_health_threshold_<unit>`` for the levels.
    """
    out = _Exposition()
    out.family(
        "kronos_health_up",
        "1 when kronos-db health could run, 0 when it could not (no connection, bad "
        "configuration).",
        [(_labels(database=database), 1.0 if up else 0.0)],
    )
    if not up:
        return out.text()
    out.family(
        "kronos_health_status",
        "Status of a kronos-db health check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        [(_labels(database=database, check=r.name), float(r.status)) for r in results],
    )
    out.family(
        "kronos_health_overall_status",
        "Worst status of all checks: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        [(_labels(database=database), float(worst([r.status for r in results])))],
    )
    for unit, (suffix, openmetrics_unit) in _FAMILY_OF_UNIT.items():
        values: list[tuple[str, float]] = []
        levels: list[tuple[str, float]] = []
        for result in results:
            for metric in result.metrics:
                if metric.unit != unit:
                    continue
                if metric.value is not None:
                    values.append(
                        (
                            _labels(database=database, check=result.name, metric=metric.name),
                            _scaled(metric, metric.value),
                        )
                    )
                threshold = metric.threshold
                for level, number in (
                    ("warning", threshold.warning if threshold else None),
                    ("critical", threshold.critical if threshold else None),
                ):
                    if number is not None:
                        levels.append(
                            (
                                _labels(
                                    database=database,
                                    check=result.name,
                                    metric=metric.name,
                                    level=level,
                                    direction=threshold.direction if threshold else "",
                                ),
                                _scaled(metric, number),
                            )
                        )
        what = {
            "seconds": "seconds",
            "bytes": "bytes",
            "percent": "a ratio (0..1)",
            "count": "a count",
        }[unit]
        out.family(
            f"kronos_health_value{suffix}",
            f"The figures kronos-db health checks compare with their thresholds, in {what}.",
            values,
            openmetrics_unit,
        )
        out.family(
            f"kronos_health_threshold{suffix}",
            f"The warning and critical levels of those figures, in {what} (direction: above "
            "or below is bad).",
            levels,
            openmetrics_unit,
        )
    out.family(
        "kronos_health_check_duration_seconds",
        "How long each check took.",
        [(_labels(database=database, check=r.name), r.seconds) for r in results],
        "seconds",
    )
    return out.text()
