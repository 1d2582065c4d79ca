"""A strict parser of monitoring plugin output, written against the Monitoring Plugins
development guidelines (https://www.monitoring-plugins.org/doc/guidelines.html):

* the first line is ``SERVICE STATUS: text`` then, after ``|``, the performance data;
* later lines are the long output; a ``|`` in them starts more performance data, which runs to
  the end of the output;
* performance data is ``'label'=value[UOM];[warn];[crit];[min];[max]`` separated by spaces:
  a label quoted with ``'`` when it holds spaces (``''`` for a quote, never ``=``), a value of
  ``[-0-9.]`` or ``U``, a UOM among none, s, ms, us, %, B, KB, MB, TB, c; warn and crit in the
  range format ``[@][start:]end`` (``~`` for minus infinity); min and max plain numbers; trailing
  empty fields may be dropped;
* the exit code is the status's: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

Anything else raises :class:`PluginOutputError`: the tests read the output exactly as a strict
consumer would.
"""

from __future__ import annotations

import dataclasses
import re

STATUSES = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
UOMS = ("", "s", "ms", "us", "%", "B", "KB", "MB", "TB", "c")
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"^@?(?:(?:~|{_NUMBER})?:)?(?:{_NUMBER})?$")
_VALUE = re.compile(rf"^(?P<value>{_NUMBER}|U)(?P<uom>[a-zA-Z%]*)$")
_FIRST = re.compile(r"^(?P<service>[A-Z][A-Z0-9_ -]*?) (?P<status>OK|WARNING|CRITICAL|UNKNOWN): ")


class PluginOutputError(AssertionError):
    """The output breaks the guidelines."""


@dataclasses.dataclass(frozen=True)
class Perf:
    label: str
    value: float | None  # None: U
    uom: str
    warn: str
    crit: str
    minimum: float | None
    maximum: float | None


@dataclasses.dataclass(frozen=True)
class PluginOutput:
    service: str
    status: str
    text: str
    long_output: tuple[str, ...]
    perfdata: tuple[Perf, ...]

    def perf(self, label: str) -> Perf:
        (found,) = [p for p in self.perfdata if p.label == label]
        return found


def _labels_and_values(data: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    position = 0
    data = data.strip()
    while position < len(data):
        if data[position] == "'":
            end = position + 1
            label = ""
            while True:
                quote = data.find("'", end)
                if quote < 0:
                    raise PluginOutputError(f"unclosed quoted label in {data!r}")
                label += data[end:quote]
                if data[quote + 1 : quote + 2] == "'":
                    label += "'"
                    end = quote + 2
                    continue
                position = quote + 1
                break
        else:
            equals = data.find("=", position)
            if equals < 0:
                raise PluginOutputError(f"performance data without '=' in {data!r}")
            label = data[position:equals]
            position = equals
            if " " in label or "'" in label:
                raise PluginOutputError(f"label {label!r} must be quoted")
        if data[position : position + 1] != "=":
            raise PluginOutputError(f"expected '=' after label {label!r}")
        if not label or "=" in label:
            raise PluginOutputError(f"bad label {label!r}")
        space = data.find(" ", position)
        value = data[position + 1 : space if space >= 0 else len(data)]
        items.append((label, value))
        position = len(data) if space < 0 else space + 1
        while position < len(data) and data[position] == " ":
            position += 1
    return items


def _number(text: str, what: str) -> float | None:
    if text == "":
        return None
    if not re.fullmatch(_NUMBER, text):
        raise PluginOutputError(f"{what} {text!r} is not a plain number")
    return float(text)


def parse_perfdata(data: str) -> list[Perf]:
    parsed = []
    for label, raw in _labels_and_values(data):
        fields = raw.split(";")
        if len(fields) > 5:
            raise PluginOutputError(f"{label}: too many fields in {raw!r}")
        fields += [""] * (5 - len(fields))
        match = _VALUE.match(fields[0])
        if not match:
            raise PluginOutputError(f"{label}: value {fields[0]!r} is not [-0-9.]+ or U")
        uom = match["uom"]
        if uom not in UOMS:
            raise PluginOutputError(f"{label}: unit {uom!r} is not one of the guidelines'")
        for name, level in (("warn", fields[1]), ("crit", fields[2])):
            if level and not _RANGE.match(level):
                raise PluginOutputError(f"{label}: {name} {level!r} is not a range")
        value = None if match["value"] == "U" else float(match["value"])
        parsed.append(
            Perf(
                label,
                value,
                uom,
                fields[1],
                fields[2],
                _number(fields[3], f"{label} min"),
                _number(fields[4], f"{label} max"),
            )
        )
    return parsed


def parse(stdout: str, exit_code: int) -> PluginOutput:
    """The plugin output, or PluginOutputError saying which guideline it breaks."""
    if not stdout.endswith("\n") or not stdout.strip():
        raise PluginOutputError("the output must be at least one whole line on stdout")
    lines = stdout[:-1].split("\n")
    first, _, perf = lines[0].partition("|")
    match = _FIRST.match(first)
    if not match:
        raise PluginOutputError(f"first line is not 'SERVICE STATUS: text': {lines[0]!r}")
    if STATUSES[match["status"]] != exit_code:
        raise PluginOutputError(f"status {match['status']} but exit code {exit_code}")
    if "|" in perf:
        raise PluginOutputError("a second '|' on the first line")
    perfdata = parse_perfdata(perf) if perf.strip() else []
    long_output = []
    for index, line in enumerate(lines[1:], start=1):
        if "|" in line:
            long_output.append(line.split("|", 1)[0])
            perfdata += parse_perfdata(" ".join([line.split("|", 1)[1], *lines[index + 1 :]]))
            break
        long_output.append(line)
    return PluginOutput(
        match["service"],
        match["status"],
        first[match.end() :].rstrip(),
        tuple(long_output),
        tuple(perfdata),
    )


def in_range(value: float, spec: str) -> bool:
    """Whether ``value`` raises an alert under the range ``spec`` (the guidelines' reading)."""
    inside = spec.startswith("@")
    spec = spec.removeprefix("@")
    start_text, _, end_text = spec.rpartition(":") if ":" in spec else ("0", "", spec)
    start = float("-inf") if start_text == "~" else float(start_text or 0)
    end = float(end_text) if end_text else float("inf")
    outside = value < start or value > end
    return not outside if inside else outside
