"""`pip install .` gives a working kronos-db anywhere: sql/ and migrations/ ship inside."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, Database, run_cli, run_process


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    (path,) = out.glob("kronos_db-*.whl")
    return path


def test_the_wheel_ships_sql_and_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "kronos_db/sql/migrations/0001_user_service.upgrade.sql",
        "kronos_db/sql/migrations/0001_user_service.downgrade.sql",
        "kronos_db/sql/queries/migrations.sql",
        "kronos_db/migrations/env.py",
        "kronos_db/migrations/script.py.mako",
        "kronos_db/migrations/versions/0001_user_service.py",
    }
    assert expected <= names
    assert "kronos_db/py.typed" in names  # type checkers read the package's annotations
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), sorted(names)
    for path in (REPO / "sql").rglob("*.sql"):
        assert f"kronos_db/sql/{path.relative_to(REPO / 'sql')}" in names


def test_the_installed_package_migrates_from_another_directory(
    wheel: Path, tmp_path: Path, empty_database: Database
) -> None:
    site = tmp_path / "site"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    installed = {"PYTHONPATH": str(site)}
    where = run_process(
        [sys.executable, "-c", "import kronos_db.resources as r; print(r.resource_root())"],
        env=installed,
        cwd=elsewhere,
    )
    assert where.stdout.strip() == str(site / "kronos_db")
    for command in ("migrate", "status"):
        result = run_cli(
            command, "--database-url", empty_database.url, env=installed, cwd=elsewhere
        )
        assert result.code == 0, result.stderr
    # new revisions belong to the project's tree, never to site-packages
    before = sorted(p.name for p in (site / "kronos_db" / "migrations" / "versions").iterdir())
    refused = run_cli("revision", "-m", "add a column", env=installed, cwd=elsewhere)
    assert refused.code == 2, refused.output
    assert "[migrations] directory" in refused.stderr
    after = sorted(p.name for p in (site / "kronos_db" / "migrations" / "versions").iterdir())
    assert after == before
