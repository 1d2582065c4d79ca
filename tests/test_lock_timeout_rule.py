"""A lock timeout of 0 means "wait for ever" to PostgreSQL: refused everywhere, exit 2.

One validator (``config.require_lock_timeout``) checks every setting that is a lock timeout,
whether it comes from the file, an environment variable or a command-line option, and the
library entry points that take one.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kronos_db.config import PartitionSettings, Settings, load_settings, section_types
from kronos_db.errors import ConfigError, ExitCode
from kronos_db.partitions.rotation import rotate


def lock_timeout_keys() -> list[str]:
    return [
        f"{name}.{field.name}"
        for name, section in section_types().items()
        for field in dataclasses.fields(section)
        if field.metadata.get("lock_timeout")
    ]


def test_every_lock_timeout_setting_is_validated() -> None:
    # a new setting named like a lock timeout must go through the validator too
    named = [
        f"{name}.{field.name}"
        for name, section in section_types().items()
        for field in dataclasses.fields(section)
        if "lock" in field.name and "timeout" in field.name
    ]
    assert set(named) <= set(lock_timeout_keys())
    assert "partitions.lock_timeout" in named
    # and the limit on how long rotate may hold a lock inserts wait on: 0 is "no limit" too
    assert "partitions.hold_timeout" in lock_timeout_keys()
    for key in lock_timeout_keys():
        for value in ("0s", "0ms", "0"):
            with pytest.raises(ConfigError, match=re.escape(f"{key}: must be at least 1ms")):
                load_settings(overrides={key: (value, "test")})
        assert load_settings(overrides={key: ("1ms", "test")})  # the smallest one allowed


def test_the_library_refuses_a_zero_lock_timeout() -> None:
    settings = dataclasses.replace(
        Settings(), partitions=PartitionSettings(lock_timeout=timedelta(0))
    )
    with pytest.raises(
        ConfigError, match=re.escape("partitions.lock_timeout: must be at least 1ms")
    ):
        rotate(None, settings, datetime.now(UTC))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "config", "key"),
    [
        (("migrate", "--lock-timeout", "0"), "", "migrations.lock_timeout"),
        (("partitions", "rotate", "--lock-timeout", "0ms"), "", "partitions.lock_timeout"),
        (
            ("expire", "sessions"),
            '[housekeeping]\nlock_timeout = "0s"\n',
            "housekeeping.lock_timeout",
        ),
    ],
)
def test_commands_exit_2_on_a_zero_lock_timeout(
    cli: Any, tmp_path: Path, argv: tuple[str, ...], config: str, key: str
) -> None:
    path = tmp_path / "kronos.toml"
    path.write_text(config)
    # no server is contacted: the setting is refused first
    result = cli(
        *argv, "--config", str(path), "--database-url", "postgresql://nobody@127.0.0.1:1/x"
    )
    assert result.code == ExitCode.USAGE, result.output
    assert f"{key}: must be at least 1ms" in result.stderr
    assert "Traceback" not in result.output
