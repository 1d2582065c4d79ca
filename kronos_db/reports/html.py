"""The health report as one self-contained HTML page (inline CSS, inline SVG charts, no script,
nothing fetched): a DBA can open it, attach it to a mail, or archive it.

What it shows is what a person reads, never a program's internals: figures in their units
(sizes, ages, percentages), each finding with the SQL that fixes it (``DROP INDEX
CONCURRENTLY``, ``VACUUM``, ``pg_terminate_backend``) ready to copy, and a statement's full
text folded under its first words (``<details>``: open it to read it all). Every value is
escaped with :func:`html.escape`: query texts and names come from the database.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from kronos_db.checks import CheckResult, Finding, Status
from kronos_db.reports.formats import levels_text, worst_first
from kronos_db.reports.health import HealthReport
from kronos_db.reports.queries import shorten_query
from kronos_db.units import human_seconds, human_size, human_value

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
pre.fix-sql { background: #f3f6fb; border-left: 3px solid #3f6fb5; padding: .4rem .6rem;
              margin: .25rem 0; white-space: pre-wrap; word-break: break-word;
              user-select: all; }
details.query summary { cursor: pointer; color: #333; }
details.query pre { white-space: pre-wrap; word-break: break-word; background: #fafafa;
                    padding: .4rem; }
.figures { color: #444; font-size: .85rem; }
svg text { font-family: system-ui, sans-serif; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _badge(status: Status) -> str:
    return (
        f'<span class="status status-{status.name.lower()}" '
        f'style="background:{_COLOURS[status]}">{status.name}</span>'
    )


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


def _query(text: str) -> str:
    """A statement folded under its first words; the whole of it when opened."""
    if not text:
        return ""
    return (
        f'<details class="query"><summary><code>{_e(shorten_query(text, 100))}</code>'
        f"</summary><pre><code>{_e(text)}</code></pre></details>"
    )


def _fix(sql_text: str) -> str:
    if not sql_text:
        return ""
    return (
        '<pre class="fix-sql" title="the SQL that fixes it: copy it">'
        f"<code>{_e(sql_text)}</code></pre>"
    )


def _findings_table(findings: Sequence[Finding]) -> str:
    if not findings:
        return ""
    rows = "".join(
        f"<tr><td>{_e(finding.subject)}</td><td>{_e(finding.detail)}{_query(finding.query)}</td>"
        f"<td>{_fix(finding.fix)}</td></tr>"
        for finding in findings[:50]
    )
    more = (
        f'<p class="meta">and {len(findings) - 50} more (see --json)</p>'
        if len(findings) > 50
        else ""
    )
    return (
        '<div class="scroll"><table class="findings"><thead><tr><th>What</th><th>Finding</th>'
        f"<th>Fix (SQL to copy)</th></tr></thead><tbody>{rows}</tbody></table></div>{more}"
    )


def _figures(result: CheckResult) -> str:
    shown = [
        f"{metric.name.replace('_', ' ')}: {human_value(metric.value, metric.unit)}"
        for metric in result.metrics
    ]
    return f'<div class="figures">{_e("; ".join(shown))}</div>' if shown else ""


def _check_row(result: CheckResult) -> str:
    hint = f'<div class="hint">{_e(result.hint)}</div>' if result.hint else ""
    return (
        f'<tr class="check check-{result.status.name.lower()}" data-check="{_e(result.name)}">'
        f"<td>{_badge(result.status)}</td><td>{_e(result.title)}<br><small>"
        f"{_e(result.name)}</small></td><td>{_e(result.summary)}{_figures(result)}{hint}</td>"
        f"<td>{_e(levels_text(result))}</td></tr>"
    )


def render_html(report: HealthReport) -> str:
    counts = {status: sum(1 for r in report.checks if r.status is status) for status in Status}
    summary = ", ".join(f"{count} {status.name}" for status, count in counts.items() if count)
    ordered = worst_first(report.checks)
    checks = "".join(_check_row(result) for result in ordered)
    tables_chart = bar_chart(
        "Largest tables (total size)",
        [
            (f"{t.schema_name}.{t.table_name}", float(t.total_bytes), human_size(t.total_bytes))
            for t in report.largest_tables
        ],
        chart_id="chart-largest-tables",
    )
    queries_chart = bar_chart(
        "Slowest queries (total time)",
        [
            (shorten_query(q.query, 60), q.total_ms, human_seconds(q.total_ms / 1000))
            for q in report.slowest_queries
        ],
        chart_id="chart-slowest-queries",
    )
    slowest = "".join(
        f"<li>{_e(human_seconds(q.total_ms / 1000))} in {q.calls:,} calls "
        f"({_e(human_seconds(q.mean_ms / 1000))} each){_query(q.query)}</li>"
        for q in report.slowest_queries
    )
    findings = (
        "".join(
            f'<section class="finding" id="finding-{_e(r.name)}"><h3>{_badge(r.status)} '
            f"{_e(r.title)}</h3><p>{_e(r.summary)}</p>"
            + (f'<p class="hint">{_e(r.hint)}</p>' if r.hint else "")
            + f"{_findings_table(r.findings)}</section>"
            for r in ordered
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
<h2>Findings</h2>
{findings}
<h2>Checks</h2>
<table id="checks">
<thead><tr><th>Status</th><th>Check</th><th>Finding</th><th>Warning / critical</th></tr></thead>
<tbody>{checks}</tbody>
</table>
<h2>Charts</h2>
<div>{tables_chart}</div>
<div>{queries_chart}</div>
<ol class="slowest">{slowest}</ol>
</body>
</html>
"""
