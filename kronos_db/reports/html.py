"""The health report as one self-contained HTML page (inline CSS, inline SVG charts, no script,
nothing fetched): a DBA can open it, attach it to a mail, or archive it.

Every value is escaped with :func:`html.escape`: query texts and names come from the database.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from kronos_db.durations import human_duration
from kronos_db.reports.health import CheckResult, HealthReport, Status

_COLOURS = {
    Status.OK: "#2e7d32",
    Status.WARNING: "#b26a00",
    Status.CRITICAL: "#c62828",
    Status.UNKNOWN: "#616161",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .25rem; }
.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #eee;
         vertical-align: top; }
th { background: #f6f6f6; }
.status { display: inline-block; min-width: 5.5rem; text-align: center; color: #fff;
          border-radius: 3px; padding: .1rem .4rem; font-weight: 600; font-size: .8rem; }
.hint { color: #555; font-style: italic; }
.overall { font-size: 1.1rem; }
.scroll { overflow-x: auto; margin-bottom: 1rem; }
code { font-size: .8rem; white-space: pre-wrap; word-break: break-all; }
svg text { font-family: system-ui, sans-serif; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _badge(status: Status) -> str:
    return (
        f'<span class="status status-{status.name.lower()}" '
        f'style="background:{_COLOURS[status]}">{status.name}</span>'
    )


def _size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def bar_chart(title: str, bars: Sequence[tuple[str, float, str]], *, chart_id: str) -> str:
    """A horizontal bar chart as inline SVG: (label, value, shown value) per bar."""
    if not bars:
        return f'<p id="{_e(chart_id)}">{_e(title)}: no data.</p>'
    row_height, label_width, bar_width, value_width = 22, 320, 360, 110
    height = row_height * len(bars) + 30
    width = label_width + bar_width + value_width
    largest = max(value for _, value, _ in bars) or 1.0
    parts = [
        f'<svg id="{_e(chart_id)}" role="img" aria-label="{_e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<text x="0" y="14" font-weight="600">{_e(title)}</text>',
    ]
    for index, (label, value, shown) in enumerate(bars):
        y = 24 + index * row_height
        length = max(1.0, bar_width * value / largest)
        short = label if len(label) <= 42 else label[:41] + "…"
        parts.append(f'<text x="0" y="{y + 14}"><title>{_e(label)}</title>{_e(short)}</text>')
        parts.append(
            f'<rect x="{label_width}" y="{y + 3}" width="{length:.1f}" '
            f'height="{row_height - 6}" fill="#3f6fb5"/>'
        )
        parts.append(f'<text x="{label_width + length + 6:.1f}" y="{y + 14}">{_e(shown)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _details_table(rows: Sequence[Any]) -> str:
    rows = [row for row in rows if dataclasses.is_dataclass(row)]
    if not rows:
        return ""
    # one table per row type (a check may mix, e.g. databases and tables)
    out = []
    kinds: dict[type[Any], list[Any]] = {}
    for row in rows:
        kinds.setdefault(type(row), []).append(row)
    for kind, items in kinds.items():
        names = [field.name for field in dataclasses.fields(kind)]
        head = "".join(f"<th>{_e(name)}</th>" for name in names)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(getattr(item, name))}</td>" for name in names) + "</tr>"
            for item in items[:50]
        )
        out.append(
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )
    return "".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, timedelta):
        return _e(human_duration(value))
    if isinstance(value, datetime):
        return _e(f"{value:%Y-%m-%d %H:%M:%S %Z}")
    if isinstance(value, float):
        return _e(f"{value:,.2f}")
    if isinstance(value, tuple):
        return _e(", ".join(map(str, value)))
    text = _e(value)
    return f"<code>{text}</code>" if len(text) > 60 else text


def _check_row(result: CheckResult) -> str:
    hint = f'<div class="hint">{_e(result.hint)}</div>' if result.hint else ""
    return (
        f'<tr class="check check-{result.status.name.lower()}" data-check="{_e(result.name)}">'
        f"<td>{_badge(result.status)}</td><td>{_e(result.title)}<br><small>"
        f"{_e(result.name)}</small></td><td>{_e(result.summary)}{hint}</td>"
        f"<td>{_e(result.warning)} / {_e(result.critical)}</td></tr>"
    )


def render_html(report: HealthReport) -> str:
    counts = {status: sum(1 for r in report.checks if r.status is status) for status in Status}
    summary = ", ".join(f"{count} {status.name}" for status, count in counts.items() if count)
    checks = "".join(_check_row(result) for result in report.checks)
    tables_chart = bar_chart(
        "Largest tables (total size)",
        [
            (f"{t.schema_name}.{t.table_name}", float(t.total_bytes), _size(t.total_bytes))
            for t in report.largest_tables
        ],
        chart_id="chart-largest-tables",
    )
    queries_chart = bar_chart(
        "Slowest queries (total time)",
        [(q.query, q.total_ms, f"{q.total_ms:,.0f} ms") for q in report.slowest_queries],
        chart_id="chart-slowest-queries",
    )
    findings = (
        "".join(
            f'<section class="finding" id="finding-{_e(r.name)}"><h3>{_badge(r.status)} '
            f"{_e(r.title)}</h3><p>{_e(r.summary)}</p>{_details_table(r.details)}</section>"
            for r in report.checks
            if r.status is not Status.OK
        )
        or "<p>Nothing to report: every check is OK.</p>"
    )
    title = f"kronos-db health: {report.database}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<p class="meta">Checked at {_e(f"{report.checked_at:%Y-%m-%d %H:%M:%S %Z}")} ·
{_e(summary)}</p>
<p class="overall" id="overall-status">Overall: {_badge(report.status)}</p>
<h2>Checks</h2>
<table id="checks">
<thead><tr><th>Status</th><th>Check</th><th>Finding</th><th>Warning / critical</th></tr></thead>
<tbody>{checks}</tbody>
</table>
<h2>Charts</h2>
<div>{tables_chart}</div>
<div>{queries_chart}</div>
<h2>Findings</h2>
{findings}
</body>
</html>
"""
