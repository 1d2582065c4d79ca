"""Where kronos-db's SQL and Alembic tree live, and the one place that vouches for SQL text.

``sql/`` and ``migrations/`` sit at the repository root; the wheel ships them inside the
package (see ``pyproject.toml``). Both layouts keep them side by side, so every path is found
relative to one root.

Runtime queries are grouped by concern in ``sql/queries/<concern>.sql``; each query opens with
``-- name: verb_object`` and a one-line ``--`` description, and code calls it by name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import LiteralString, cast

_PACKAGE_DIR = Path(__file__).resolve().parent
_NAME_MARKER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def resource_root() -> Path:
    """The directory holding ``sql/`` and ``migrations/`` (the package when installed)."""
    return _PACKAGE_DIR if is_installed_package() else _PACKAGE_DIR.parent


def is_installed_package() -> bool:
    """True when kronos-db runs from an installed wheel (its SQL inside the package directory),
    not from a checkout or an editable install."""
    return (_PACKAGE_DIR / "sql").is_dir()


def sql_dir() -> Path:
    return resource_root() / "sql"


def migrations_dir() -> Path:
    return resource_root() / "migrations"


def trusted_sql(text: str) -> LiteralString:
    """Vouch for SQL read from kronos-db's own files (never from user input)."""
    # mypy treats LiteralString as str; pyright and readers see the vouching
    return cast(LiteralString, text)  # type: ignore[redundant-cast]


@functools.cache
def _queries(concern: str) -> dict[str, LiteralString]:
    path = sql_dir() / "queries" / f"{concern}.sql"
    text = path.read_text(encoding="utf-8")
    parts = _NAME_MARKER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"{path}: query {name!r} is defined twice")
        queries[name] = trusted_sql(body.strip().rstrip(";").strip())
    return queries


def query(concern: str, name: str) -> LiteralString:
    """The SQL of query ``name`` in ``sql/queries/<concern>.sql``."""
    try:
        return _queries(concern)[name]
    except KeyError:
        raise KeyError(f"no query {name!r} in sql/queries/{concern}.sql") from None


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def render_with_literals(sql_text: LiteralString, params: Mapping[str, object]) -> str:
    """Render a query with its values quoted by psycopg, for offline output (``--sql``) only.

    Online, values are always bound parameters; a script printed for review has no server to
    bind them, so psycopg's own literal quoting stands in.
    """
    from psycopg import sql

    template = trusted_sql(
        _PLACEHOLDER.sub(r"{\1}", sql_text.replace("{", "{{").replace("}", "}}"))
    )
    return sql.SQL(template).format(**{k: sql.Literal(v) for k, v in params.items()}).as_string()
