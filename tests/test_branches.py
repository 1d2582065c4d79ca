"""Branches in the revision graph, and the errors around them: duplicate ids, two heads and
`merge`, `migrate --sql` without a server, and every error as JSON under --json."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, Database, run_cli

from kronos_db import migrations
from kronos_db.config import MigrationSettings, Settings
from kronos_db.migration_sql import sql_path

HEAD = migrations.MigrationTree(REPO).script_directory().get_heads()[0]
NEXT = f"{int(HEAD) + 1:04d}"
UNREACHABLE = "postgresql://nobody:s3cret-pw@127.0.0.1:1/none"


def _add_revision(root: Path, revision: str, down: str, slug: str, upgrade_sql: str) -> Path:
    """A revision written by hand, as a developer on another branch would have."""
    path = root / "migrations" / "versions" / f"{revision}_{slug}.py"
    path.write_text(
        f'"""{slug.replace("_", " ")}"""\n\n'
        "from kronos_db.migration_sql import run_sql\n\n"
        f'revision = "{revision}"\ndown_revision = "{down}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        'def upgrade() -> None:\n    run_sql(__file__, "upgrade")\n\n\n'
        'def downgrade() -> None:\n    run_sql(__file__, "downgrade")\n',
        encoding="utf-8",
    )
    sql_path(path, "upgrade").write_text(upgrade_sql, encoding="utf-8")
    sql_path(path, "downgrade").write_text("-- nothing\n", encoding="utf-8")
    return path


def test_two_revisions_with_one_id_are_refused_naming_both(
    tree_copy: tuple[Path, Path], empty_database: Database
) -> None:
    root, config = tree_copy
    _add_revision(root, NEXT, HEAD, "index_routes", "CREATE INDEX ON routes (service);\n")
    _add_revision(root, NEXT, HEAD, "index_cache", "CREATE INDEX ON cache (value);\n")
    for command in ("status", "migrate", "history"):
        result = run_cli(command, "--config", str(config), "--database-url", empty_database.url)
        assert result.code == 2, result.output
        assert f"revision id {NEXT}" in result.stderr
        assert f"{NEXT}_index_routes.py" in result.stderr
        assert f"{NEXT}_index_cache.py" in result.stderr
    with empty_database.connect() as conn:
        assert migrations.current_revisions(conn) == ()


def test_a_missing_parent_is_refused(tree_copy: tuple[Path, Path]) -> None:
    root, config = tree_copy
    _add_revision(root, NEXT, "0999", "orphan", "SELECT 1;\n")
    result = run_cli("migrate", "--sql", "--from", "base", "--config", str(config))
    assert result.code == 2, result.output
    assert f"revision {NEXT} follows 0999" in result.stderr


def test_two_heads_are_explained_then_merged(
    tree_copy: tuple[Path, Path], empty_database: Database
) -> None:
    root, config = tree_copy
    other = f"{int(NEXT) + 1:04d}"
    _add_revision(root, NEXT, HEAD, "index_routes", "CREATE INDEX ON routes (service);\n")
    _add_revision(root, other, HEAD, "index_cache", "CREATE INDEX ON cache (value);\n")
    args = ("--config", str(config), "--database-url", empty_database.url)
    refused = run_cli("migrate", *args)
    assert refused.code == 2, refused.output
    assert f"2 heads ({NEXT}, {other})" in refused.stderr
    assert f"follow {HEAD}" in refused.stderr
    assert "kronos-db merge" in refused.stderr
    status = run_cli("status", "--json", *args)
    assert status.code == 5, status.output
    assert json.loads(status.stdout)["heads"] == [NEXT, other]
    assert "kronos-db merge" in json.loads(status.stdout)["branches"]
    assert "kronos-db merge" in run_cli("status", *args).stderr
    # a new revision on top of two heads would only add a third way to be wrong
    assert run_cli("revision", "-m", "more", "--config", str(config)).code == 2

    merged = run_cli("merge", "-m", "join the index branches", "--config", str(config))
    assert merged.code == 0, merged.output
    merge_id = f"{int(other) + 1:04d}"
    tree = migrations.MigrationTree(root)
    assert tree.script_directory().get_heads() == [merge_id]
    (merge_file,) = (root / "migrations" / "versions").glob(f"{merge_id}_*.py")
    assert sql_path(merge_file, "upgrade").is_file()
    assert run_cli("merge", "-m", "again", "--config", str(config)).code == 2

    assert run_cli("migrate", *args).code == 0
    settings = Settings(migrations=MigrationSettings(directory=str(root)))
    status_after = migrations.status(settings, empty_database.target)
    assert status_after.current == (merge_id,)
    assert status_after.up_to_date
    assert status_after.branches == ""
    with empty_database.connect() as conn:
        indexes = {
            row[0]
            for row in conn.execute(
                "SELECT indexrelid::regclass::text FROM pg_index"
                " WHERE indrelid IN ('routes'::regclass, 'cache'::regclass)"
            )
        }
    assert {"routes_service_idx", "cache_value_idx"} <= indexes


def test_offline_sql_refuses_to_guess_without_a_server() -> None:
    result = run_cli("migrate", "--sql", "--database-url", UNREACHABLE)
    assert result.code == 3, result.output
    assert "--from" in result.stderr
    assert result.stdout == ""
    assert "s3cret-pw" not in result.output
    rendered = run_cli("migrate", "--sql", "--from", "base", "--database-url", UNREACHABLE)
    assert rendered.code == 0, rendered.output
    assert "CREATE TABLE roles" in rendered.stdout


def test_every_error_is_one_json_object_under_json(database: Database) -> None:
    cases = [
        (("status", "--json", "--database-url", UNREACHABLE), 3),
        (("migrate", "--json", "no_such_revision", "--database-url", database.url), 2),
        (("migrate", "--json", "--lock-timeout", "soon", "--database-url", database.url), 2),
        (("check", "--json", "--bogus"), 2),
    ]
    for args, code in cases:
        result = run_cli(*args)
        assert result.code == code, (args, result.output)
        document = json.loads(result.stdout)
        assert document["exit_code"] == code
        assert document["error"] == result.stderr.strip().removeprefix("kronos-db: error: ")
        assert "s3cret-pw" not in result.stdout
    # without --json, stdout stays empty for the error
    plain = run_cli("status", "--database-url", UNREACHABLE)
    assert plain.code == 3
    assert plain.stdout == ""
