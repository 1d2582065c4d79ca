"""The migration tree: a directory holding ``migrations/`` (Alembic) and ``sql/migrations/`` (the
SQL pairs), its revisions oldest first, refused when two files claim one revision id or a parent
is missing. Reading files only: :mod:`kronos_db.lint` reads the tree it lints and
:mod:`kronos_db.migrations`, which applies revisions (after the lint gate), reads it too, so it
sits below both.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import Script, ScriptDirectory

from kronos_db.config import Settings
from kronos_db.errors import MigrationTreeError, UnknownRevisionError
from kronos_db.migration_sql import sql_path
from kronos_db.resources import is_installed_package, resource_root


@dataclasses.dataclass(frozen=True)
class MigrationTree:
    """A directory holding ``migrations/`` (Alembic) and ``sql/migrations/`` (the SQL pairs)."""

    root: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> MigrationTree:
        directory = settings.migrations.directory
        return cls(Path(directory).resolve() if directory else resource_root())

    @property
    def migrations_dir(self) -> Path:
        return self.root / "migrations"

    @property
    def sql_dir(self) -> Path:
        return self.root / "sql" / "migrations"

    def alembic_config(self, run: object | None = None, *, stdout: Any = None) -> Config:
        # run: the MigrationRun env.py picks up (kronos_db.migrations), None to only read the tree
        config = Config(stdout=stdout) if stdout is not None else Config()
        config.set_main_option("script_location", str(self.migrations_dir).replace("%", "%%"))
        config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
        config.set_main_option("truncate_slug_length", "40")
        config.attributes["kronos_run"] = run
        return config

    def script_directory(self) -> ScriptDirectory:
        """Alembic's view of the tree, refused when two files claim one revision id.

        Alembic only warns about a duplicate id and keeps the last file it read, so one revision
        would silently hide the other; a parent that is missing would fail later, deep inside
        an upgrade. Both are refused here, where every command loads the tree.
        """
        if not (self.migrations_dir / "env.py").is_file():
            raise UnknownRevisionError(f"{self.migrations_dir}: not a migration tree (no env.py)")
        script_dir = ScriptDirectory.from_config(self.alembic_config())
        self._verify(script_dir)
        return script_dir

    def _verify(self, script_dir: ScriptDirectory) -> None:
        files: dict[str, list[Path]] = defaultdict(list)
        parents: dict[str, tuple[str, ...]] = {}
        # Alembic's own loader (the revision map is built from it), so that exactly the files
        # Alembic would read are checked
        for script in script_dir._load_revisions():
            files[script.revision].append(Path(script.path))
            parents[script.revision] = _down_revisions(script)
        for revision, paths in sorted(files.items()):
            if len(paths) > 1:
                shown = " and ".join(_relative(p, self.root) for p in sorted(paths))
                raise MigrationTreeError(
                    f"revision id {revision} is claimed by {shown}: one would hide the other. "
                    f"Renumber the newer one after the latest revision (its file names, "
                    f"`revision` and `down_revision`), or give it a new id and join the two "
                    f"heads with `kronos-db merge`"
                )
        for revision, downs in sorted(parents.items()):
            for down in downs:
                if down not in files:
                    raise MigrationTreeError(
                        f"revision {revision} follows {down}, which is not in "
                        f"{_relative(self.migrations_dir, self.root)}/versions"
                    )

    def ensure_writable(self) -> None:
        """Refuse to write revisions into an installed package: they belong to a project tree."""
        if self.root == resource_root() and is_installed_package():
            raise MigrationTreeError(
                f"{self.root} is the migration tree shipped inside the installed kronos-db "
                "package: new revisions belong to your project's tree. Point "
                "`[migrations] directory` in kronos.toml (or --config) at a directory holding "
                "migrations/ and sql/migrations/"
            )

    def revisions(self) -> list[Script]:
        """Every revision, oldest first."""
        return list(reversed(list(self.script_directory().walk_revisions())))

    def upgrade_sql(self, script: Script) -> Path:
        return sql_path(script.path, "upgrade")


def _down_revisions(script: Script) -> tuple[str, ...]:
    down = script.down_revision
    return (down,) if isinstance(down, str) else tuple(down or ())


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
