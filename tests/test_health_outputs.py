"""health's outputs read by the programs that consume them, each with a strict reader of its own:
the Nagios plugin output by a parser written against the Monitoring Plugins guidelines
(tests/nagios.py), the Prometheus exposition by prometheus_client's strict OpenMetrics parser,
the JSON by the JSON Schema docs/health.schema.json documents, and the HTML page by a real
headless Chromium, reading the text a person sees."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import nagios
import psycopg
import pytest
from conftest import REPO, Database, retry_on_eviction
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from kronos_db.reports.health import CHECK_NAMES

SCHEMA = json.loads((REPO / "docs" / "health.schema.json").read_text(encoding="utf-8"))
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


def validate(document: Any) -> None:
    jsonschema.validate(document, SCHEMA, format_checker=jsonschema.FormatChecker())


def plant_problems(conn: psycopg.Connection[Any]) -> None:
    """A CRITICAL (a sequence near its end), WARNINGs whose text holds a '|' (an index named
    with one, duplicated) and an invalid index."""
    conn.execute("SELECT setval('users_id_seq', 2100000000)")
    conn.execute('CREATE INDEX "users|email_idx" ON users (email)')
    conn.execute("CREATE TABLE codes (code text)")
    conn.execute("INSERT INTO codes VALUES ('a'), ('a')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY codes_code_key ON codes (code)")


def test_nagios_output_follows_the_guidelines(
    cli: Any, database: Database, conn: psycopg.Connection[Any]
) -> None:
    plant_problems(conn)
    skip = ("--skip", "settings", "--skip", "last_backup")
    result = cli("health", "--database-url", database.url, *skip)
    output = nagios.parse(result.stdout, result.code)
    assert (output.service, output.status) == ("KRONOS", "CRITICAL")
    # worst first: the CRITICAL one leads, though `sequences` comes after the index checks
    assert output.text.startswith("sequences: "), output.text
    assert output.text.index("invalid_indexes:") < output.text.index("duplicate_indexes:")
    # the '|' of the index name is no separator: the text shows it as '¦'
    assert "users¦email_idx" in output.text
    # performance data for every figure of every check, with its levels
    document = json.loads(cli("health", "--database-url", database.url, *skip, "--json").stdout)
    metrics = {m["name"]: m for check in document["checks"] for m in check["metrics"]}
    assert {p.label for p in output.perfdata} == set(metrics)
    sequences = output.perf("sequences")
    assert sequences.uom == "%"
    assert (sequences.warn, sequences.crit) == ("~:75", "~:90")
    assert nagios.in_range(sequences.value or 0, sequences.crit)  # what made it CRITICAL
    connections = output.perf("connections")
    assert not nagios.in_range(connections.value or 0, connections.warn)
    assert output.perf("long_queries").uom == "s"
    assert output.perf("invalid_indexes").value == 1
    # the long output: one line per check, worst first, never a '|' before the perf data
    assert len(output.long_output) == len(CHECK_NAMES) - 2
    assert output.long_output[0].startswith("CRITICAL ")
    # a server that cannot be reached: the UNKNOWN line on stdout, exit 3
    down = cli("health", "--database-url", UNREACHABLE)
    assert nagios.parse(down.stdout, down.code).status == "UNKNOWN"
    assert "cannot connect" in down.stdout
    # the other monitoring commands speak the same way, also when they cannot run
    partitions = cli("partitions", "status", "--database-url", database.url)
    parsed = nagios.parse(partitions.stdout, partitions.code)
    assert (parsed.service, parsed.status) == ("PARTITIONS", "OK")
    assert parsed.perf("partitions_ahead").value == 7
    assert parsed.perf("partitions_ahead").warn == "3:"  # fewer than 3 ahead: WARNING
    assert "┏" not in partitions.stdout.splitlines()[0]  # the table comes after, never first
    for argv in (
        ("partitions", "status", "--interval", "yearly"),  # a bad option
        ("backup", "status", "--config", "/nonexistent/kronos.toml"),  # no configuration
        ("backup", "status", "--database-url", UNREACHABLE),
        ("health", "--bogus-option"),
    ):
        failed = cli(*argv)
        assert failed.code == 3, (argv, failed.output)
        assert nagios.parse(failed.stdout, failed.code).status == "UNKNOWN", argv


def test_prometheus_exposition_passes_the_strict_parser(
    cli: Any, database: Database, conn: psycopg.Connection[Any]
) -> None:
    plant_problems(conn)
    result = cli("health", "--database-url", database.url, "--format", "prometheus")
    assert result.code == 2, result.output
    families = {family.name: family for family in openmetrics_families(result.stdout)}
    assert {f.name for f in text_families(result.stdout)} >= {"kronos_health_up"}
    (up,) = families["kronos_health_up"].samples
    assert up.value == 1
    statuses = {s.labels["check"]: s.value for s in families["kronos_health_status"].samples}
    assert statuses["sequences"] == 2
    assert set(statuses) == set(CHECK_NAMES)
    # one unit per family: its name ends with the unit, and nothing else goes in it
    units = {
        "kronos_health_value_seconds": "seconds",
        "kronos_health_value_bytes": "bytes",
        "kronos_health_value_ratio": "ratio",
    }
    for name, unit in units.items():
        assert families[name].unit == unit
    ratios = {s.labels["metric"]: s.value for s in families["kronos_health_value_ratio"].samples}
    assert 0.9 < ratios["sequences"] <= 1.0  # percentages as ratios
    levels = {
        (s.labels["metric"], s.labels["level"]): s.value
        for s in families["kronos_health_threshold_seconds"].samples
    }
    assert levels[("long_queries", "warning")] == 300
    counts = {s.labels["metric"]: s.value for s in families["kronos_health_value"].samples}
    assert counts["invalid_indexes"] == 1
    # health could not run: it says so, in a series an alert can watch
    down = cli("health", "--database-url", UNREACHABLE, "--format", "prometheus")
    assert down.code == 3
    families = {family.name: family for family in openmetrics_families(down.stdout)}
    assert [s.value for s in families["kronos_health_up"].samples] == [0]


def test_json_follows_its_documented_schema(
    cli: Any, database: Database, conn: psycopg.Connection[Any]
) -> None:
    plant_problems(conn)
    result = cli("health", "--database-url", database.url, "--json")
    document = json.loads(result.stdout)
    validate(document)
    assert document["schema_version"] == 1
    assert document["exit_code"] == result.code == 2
    checks = {check["name"]: check for check in document["checks"]}
    (long_queries,) = checks["long_queries"]["metrics"]
    # numbers as numbers, durations in seconds, thresholds as values with their direction
    assert long_queries == {
        "name": "long_queries",
        "value": 0,
        "unit": "seconds",
        "warning": 300,
        "critical": 1800,
        "direction": "above",
    }
    (hit_rate,) = checks["cache_hit_rate"]["metrics"]
    assert hit_rate["direction"] == "below"
    fixes = [f["fix"] for f in checks["invalid_indexes"]["findings"]]
    assert fixes == ['DROP INDEX CONCURRENTLY "public"."codes_code_key";']
    for argv in (
        ("health", "--database-url", UNREACHABLE, "--json"),
        ("partitions", "status", "--database-url", database.url, "--json"),
        ("backup", "status", "--database-url", database.url, "--json"),
        ("report", "kronos", "--database-url", database.url, "--json"),
    ):
        other = cli(*argv)
        data = json.loads(other.stdout)
        validate(data)
        if argv[0] != "report":
            assert data["exit_code"] == other.code, argv
    assert json.loads(cli(*argv[:0], "health", "--database-url", UNREACHABLE, "--json").stdout)[
        "error"
    ].startswith("cannot connect")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# what a Python repr looks like on a page: Gap(start=…), datetime.datetime(…), {'key': …}
PYTHON_REPR = re.compile(r"\b[A-Z]\w*\(\w+=|datetime\.\w+\(|\{'\w+': |\bNone\b")
PROBE = """<script>
window.addEventListener("load", () => {
  const seen = document.createElement("pre");
  seen.id = "kronos-probe-visible-text";
  seen.textContent = document.body.innerText;
  document.body.appendChild(seen);
});
</script>"""


@pytest.mark.slow
def test_html_renders_in_headless_chromium_with_fixes_to_copy(
    cli: Any, database: Database, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("Debian's chromium package is not installed (apt-get install chromium)")
    plant_problems(conn)
    page = tmp_path / "health.html"

    def render(_attempt: int) -> None:
        # a statement longer than any summary, among the slowest (pg_stat_statements is shared
        # with every run on this server and may evict it: retried then)
        conn.execute("SELECT pg_sleep(0.3) /* " + "x" * 300 + " end of the statement */")
        result = cli("health", "--database-url", database.url, "--html", str(page))
        assert result.code == 2, result.output
        assert "end of the statement" in page.read_text(encoding="utf-8")

    retry_on_eviction(conn, render)
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    # the test's copy only: a probe writes what the page shows (innerText: only what a reader
    # sees, so a statement folded in a closed <details> is not in it)
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        flags = (*CHROMIUM_FLAGS, f"--user-data-dir={profile}")
        dom = subprocess.run(
            [browser, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        screenshot = tmp_path / "health.png"
        shot = subprocess.run(
            [
                browser,
                *flags,
                f"--screenshot={screenshot}",
                "--window-size=1280,2400",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    match = re.search(r'<pre id="kronos-probe-visible-text">(.*?)</pre>', rendered, re.DOTALL)
    assert match, rendered[-2000:]
    visible = match.group(1)
    # no internal repr anywhere, figures in readable units
    assert not PYTHON_REPR.search(visible), PYTHON_REPR.search(visible)
    assert not PYTHON_REPR.search(text), PYTHON_REPR.search(text)
    assert re.search(r"\b\d+(\.\d)? (kB|MB|B)\b", visible)
    # each finding with the SQL that fixes it, visible, ready to copy
    assert 'DROP INDEX CONCURRENTLY "public"."codes_code_key";' in visible.replace("&quot;", '"')
    assert 'DROP INDEX CONCURRENTLY "public"."users|email_idx";' in visible.replace("&quot;", '"')
    # a statement's full text is on the page, on demand: folded, not shown until opened
    assert "end of the statement" in rendered
    assert "end of the statement" not in visible
    assert re.search(r'<details class="query">', rendered)
    assert 'id="overall-status"' in rendered
    assert 'data-check="invalid_indexes"' in rendered
    assert '<svg id="chart-largest-tables"' in rendered
    assert shot.returncode == 0
    assert screenshot.stat().st_size > 10_000
    artifacts = REPO / "artifacts"
    if artifacts.is_dir():  # keep the screenshot when CI collects artefacts
        shutil.copy(screenshot, artifacts / "health-report.png")
