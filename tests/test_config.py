"""Configuration loading, connection resolution and redaction."""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import REPO, run_cli

from kronos_db import db
from kronos_db.config import (
    Settings,
    environment_variable,
    load_settings,
    section_types,
    setting_variables,
)
from kronos_db.docs import update_configuration_doc
from kronos_db.durations import format_duration, parse_duration
from kronos_db.errors import ConfigError, UsageError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kronos.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KRONOS_CONFIG", raising=False)
    settings = load_settings()
    assert settings == Settings()
    assert settings.path is None
    assert settings.sources["migrations.lock_timeout"] == "default"


def test_file_values_and_their_source(tmp_path: Path) -> None:
    path = _write(tmp_path, '[migrations]\nlock_timeout = "2s"\nretries = 3\n')
    settings = load_settings(path)
    assert settings.migrations.lock_timeout == timedelta(seconds=2)
    assert settings.migrations.retries == 3
    assert settings.sources["migrations.retries"] == str(path)


def test_options_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[migrations]\nretries = 3\n")
    settings = load_settings(path, {"migrations.retries": (7, "option --retries")})
    assert settings.migrations.retries == 7
    assert settings.sources["migrations.retries"] == "option --retries"


def test_kronos_config_variable_and_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    path = _write(elsewhere, "[migrations]\nretries = 1\n")
    monkeypatch.setenv("KRONOS_CONFIG", str(path))
    assert load_settings().migrations.retries == 1
    monkeypatch.delenv("KRONOS_CONFIG")
    monkeypatch.chdir(elsewhere)
    assert load_settings().path == Path("kronos.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[migrations]\nlock_timout = "1s"\n', "unknown key migrations.lock_timout"),
        ("[migration]\n", "unknown section [migration]"),
        ('[migrations]\nlock_timeout = "soon"\n', "migrations.lock_timeout: invalid duration"),
        ("[migrations]\nlock_timeout = 5\n", "migrations.lock_timeout: a duration needs a unit"),
        ("[migrations]\nlock_timeout = 0\n", "migrations.lock_timeout: must be at least 1ms"),
        (
            '[migrations]\nconcurrent_lock_timeout = "0ms"\n',
            "migrations.concurrent_lock_timeout: must be at least 1ms",
        ),
        ("[migrations]\nretries = -1\n", "migrations.retries: must be at least 0"),
        ('[migrations]\nretries = "3"\n', "migrations.retries: expected an integer"),
        ("[database]\ndbname = 3\n", "database.dbname: expected a string"),
        ("[migrations\n", "invalid TOML"),
    ],
)
def test_invalid_files_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in caught.value.message
    assert message in caught.value.message


def test_a_bad_file_exits_2_from_the_cli(tmp_path: Path) -> None:
    path = _write(tmp_path, '[migrations]\nretries = "many"\n')
    result = run_cli("status", "--config", str(path))
    assert result.code == 2
    assert f"{path}: migrations.retries" in result.stderr
    missing = run_cli("status", "--config", str(tmp_path / "nope.toml"))
    assert missing.code == 2
    assert "not found" in missing.stderr


def test_config_show_reports_sources_and_masks_secrets(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[database]\nurl = "postgresql://app:t0p-s3cret@db.internal/kronos"\n'
        "[migrations]\nretries = 2\n",
    )
    result = run_cli("config", "show", "--json", "--config", str(path))
    assert result.code == 0, result.stderr
    assert "t0p-s3cret" not in result.output
    data = json.loads(result.stdout)
    rows = {row["key"]: row for row in data["settings"]}
    assert rows["migrations.retries"]["value"] == "2"
    assert rows["migrations.retries"]["source"] == str(path)
    assert rows["migrations.lock_timeout"]["source"] == "default"
    assert rows["database.url"]["value"] == "postgresql://app:****@db.internal/kronos"
    assert data["connection"]["source"] == str(path)
    assert data["connection"]["target"] == "host=db.internal dbname=kronos user=app"


def test_configuration_doc_lists_every_setting() -> None:
    path = REPO / "docs" / "configuration.md"
    text = path.read_text(encoding="utf-8")
    assert update_configuration_doc(text) == text, "run `python -m kronos_db.docs`"


# ---------------------------------------------------------------- connection resolution


def test_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    monkeypatch.setenv("DATABASE_URL", "postgresql://b@host-b/db_b")
    monkeypatch.setenv("KRONOS_DATABASE_URL", "postgresql://a@host-a/db_a")
    assert db.resolve_target(None, settings).dbname == "db_a"
    assert db.resolve_target("postgresql://o@host-o/db_o", settings).dbname == "db_o"
    monkeypatch.delenv("KRONOS_DATABASE_URL")
    target = db.resolve_target(None, settings)
    assert (target.dbname, target.source) == ("db_b", "$DATABASE_URL")


def test_libpq_defaults_get_the_kronos_database(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "KRONOS_DATABASE_URL", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    target = db.resolve_target(None, Settings())
    assert target.dbname == "kronos"
    assert target.source == "libpq"
    monkeypatch.setenv("PGDATABASE", "from_env")
    assert db.resolve_target(None, Settings()).dbname == "from_env"


def test_sqlalchemy_style_urls_are_accepted() -> None:
    target = db.resolve_target("postgresql+psycopg://u:pw@h:6543/d", Settings())
    assert target.params["port"] == "6543"
    assert target.describe() == "host=h port=6543 dbname=d user=u"


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://user:p%40ss:word@host/db",
        "host=h password=p@ss:word dbname=d",
        "host=h password='p@ss:word' dbname=d",
        "postgresql://host/db?password=p@ss:word",
    ],
)
def test_redaction_hides_passwords(text: str) -> None:
    target = db.resolve_target(text, Settings())
    assert "p@ss:word" not in target.redact(f"failed: {text}")
    assert "p%40ss:word" not in target.redact(f"failed: {text}")
    assert "word" not in target.describe()


def test_invalid_url_error_hides_the_password() -> None:
    with pytest.raises(UsageError) as caught:
        db.resolve_target("host=h password=s3cr3t-value dbname", Settings())
    assert "s3cr3t-value" not in caught.value.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5),
        ("15m", 900),
        ("1h", 3600),
        ("7d", 604800),
        ("2w", 1209600),
        ("0", 0),
        ("1.5s", 1.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    value = parse_duration(text)
    assert value.total_seconds() == seconds
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("text", ["5x", "", "-1s", "s", "1 hour", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# ---------------------------------------------------------------- the environment (12-factor)


def _other_value(kind: Any, default: Any, minimum: float | None) -> tuple[str, Any]:
    """A value unlike the default, as an environment variable spells it, and as it loads."""
    if kind is bool:
        return ("no" if default else "yes"), not default
    if kind is timedelta:
        value = default + timedelta(seconds=7)
        return format_duration(value), value
    if kind is int:
        value = max(default + 3, int(minimum or 0))
        return str(value), value
    if kind is float:
        return str(default + 1.5), default + 1.5
    if typing.get_origin(kind) is Literal:
        choice = next(c for c in typing.get_args(kind) if c != default)
        return str(choice), choice
    if kind is str:
        return "from-the-environment", "from-the-environment"
    raise AssertionError(f"no test value for {kind!r}")


def test_every_setting_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    defaults = Settings()
    environ: dict[str, str] = {}
    expected: dict[str, Any] = {}
    for section, cls in section_types().items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            dotted = f"{section}.{field.name}"
            default = getattr(getattr(defaults, section), field.name)
            text, value = _other_value(hints[field.name], default, field.metadata.get("minimum"))
            environ[environment_variable(dotted)] = text
            expected[dotted] = value
    if "KRONOS_DATABASE_URL" in environ:
        environ["KRONOS_DATABASE_URL"] = "postgresql://app@db.internal/kronos"
        expected["database.url"] = "postgresql://app@db.internal/kronos"
    settings = load_settings(environ=environ)
    for dotted, value in expected.items():
        section, _, key = dotted.partition(".")
        assert getattr(getattr(settings, section), key) == value, dotted
        assert settings.sources[dotted] == "$" + environment_variable(dotted)
    assert len(setting_variables()) == len(expected), "two settings share one variable"


def test_option_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = _write(tmp_path, '[migrations]\nretries = 3\nlock_wait = "1m"\n')
    environ = {"KRONOS_MIGRATIONS_RETRIES": "5", "KRONOS_MIGRATIONS_LOCK_WAIT": "2m"}
    settings = load_settings(path, {"migrations.retries": (7, "option --retries")}, environ=environ)
    assert settings.migrations.retries == 7
    assert settings.sources["migrations.retries"] == "option --retries"
    assert settings.migrations.lock_wait == timedelta(minutes=2)
    assert settings.sources["migrations.lock_wait"] == "$KRONOS_MIGRATIONS_LOCK_WAIT"
    assert load_settings(path, environ={}).migrations.lock_wait == timedelta(minutes=1)
    assert load_settings(environ={}).sources["migrations.lock_wait"] == "default"


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("KRONOS_MIGRATIONS_RETRIES", "many", "migrations.retries: expected an integer"),
        ("KRONOS_MIGRATIONS_RETRIES", "-2", "migrations.retries: must be at least 0"),
        ("KRONOS_MIGRATIONS_LOCK_TIMEOUT", "soon", "migrations.lock_timeout: invalid duration"),
        ("KRONOS_SECURITY_ROLE_LOGIN", "maybe", "security.role_login: expected true or false"),
        ("KRONOS_PARTITIONS_INTERVAL", "yearly", "partitions.interval: expected one of"),
        ("KRONOS_HEALTH_BLOAT_WARNING", "lots", "health.bloat_warning: expected a number"),
    ],
)
def test_a_bad_value_in_the_environment_names_the_variable(
    variable: str, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={variable: text})
    assert caught.value.message.startswith(f"${variable}: ")
    assert message in caught.value.message


def test_unknown_variables_are_warned_of_with_the_closest_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {
        "KRONOS_BACKUP_DIRECTORY": "/var/backups",  # backups, plural
        "KRONOS_COMPLETELY_UNRELATED_THING": "1",
        "KRONOS_CONFIG_FILE_UNKNOWN_" + "X" * 3: "1",
        "KRONOS_TEST_HOST": "127.0.0.1",  # the tests' own
        "KRONOS_BENCH_SERVER": "postgresql://x",  # the benchmarks'
        "KRONOS_DEBUG": "1",
        "KRONOS_LOG_FORMAT": "json",
    }
    caplog.set_level(logging.WARNING, logger="kronos_db.config")
    settings = load_settings(environ=environ)
    assert settings.backups.directory == ""
    warnings = [record.getMessage() for record in caplog.records]
    assert any(
        "KRONOS_BACKUP_DIRECTORY" in w
        and "did you mean KRONOS_BACKUPS_DIRECTORY" in w
        and "(backups.directory)" in w
        for w in warnings
    ), warnings
    assert any("KRONOS_COMPLETELY_UNRELATED_THING" in w for w in warnings)
    assert not any(
        name in " ".join(warnings)
        for name in ("KRONOS_TEST_HOST", "KRONOS_BENCH_SERVER", "KRONOS_DEBUG ", "KRONOS_LOG")
    )
    caplog.clear()
    load_settings(environ=environ)
    assert not caplog.records, "warned twice about the same variable"


def test_the_cli_reads_the_environment_and_config_show_names_it(tmp_path: Path) -> None:
    environ = {
        "KRONOS_BACKUPS_DIRECTORY": str(tmp_path / "dumps"),
        "KRONOS_HOUSEKEEPING_BATCH_TIME": "40ms",
        "KRONOS_BACKUPS_KEPE": "3",
    }
    result = run_cli("config", "show", "--json", env=environ)
    assert result.code == 0, result.stderr
    rows = {row["key"]: row for row in json.loads(result.stdout)["settings"]}
    assert rows["backups.directory"]["value"] == str(tmp_path / "dumps")
    assert rows["backups.directory"]["source"] == "$KRONOS_BACKUPS_DIRECTORY"
    assert rows["housekeeping.batch_time"]["value"] == "40ms"
    assert rows["backups.keep"]["variable"] == "KRONOS_BACKUPS_KEEP"
    assert result.stderr.strip() == (
        "kronos-db: warning: unknown environment variable KRONOS_BACKUPS_KEPE, ignored: "
        "did you mean KRONOS_BACKUPS_KEEP (backups.keep)?"
    )
    bad = run_cli("config", "show", env={"KRONOS_MIGRATIONS_RETRIES": "many"})
    assert bad.code == 2
    assert bad.stderr.strip().splitlines() == [
        "kronos-db: error: $KRONOS_MIGRATIONS_RETRIES: migrations.retries: "
        "expected an integer, got 'many'"
    ]


def test_a_configuration_file_that_is_not_utf8_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "kronos.toml"
    path.write_bytes('[backups]\ndirectory = "/srv/sauvegardes-été"\n'.encode("latin-1"))
    result = run_cli("config", "show", "--config", str(path))
    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"kronos-db: error: {path}: not UTF-8 text (byte 0xe9")
