"""``kronos-db config``: the effective configuration and where each value came from."""

from __future__ import annotations

import typer

from kronos_db.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    emit_json,
    settings_for,
    stdout,
    target_for,
)
from kronos_db.config import effective_settings

app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@app.command("show")
def show(
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Print every setting, its value (secrets masked), and where it came from.

    Example: kronos-db config show --config /etc/kronos/kronos.toml
    """
    settings = settings_for(config)
    target = target_for(database_url, settings)
    rows = effective_settings(settings)
    connection = {"target": target.describe(), "source": target.source}
    if json:
        emit_json(
            {
                "file": str(settings.path) if settings.path else None,
                "connection": connection,
                "settings": rows,
            }
        )
        return
    from rich.table import Table

    stdout.print(f"configuration file: {settings.path or 'none (defaults)'}")
    stdout.print(f"connection: {connection['target']} (from {connection['source']})")
    table = Table("setting", "value", "from", "meaning")
    for row in rows:
        table.add_row(row.key, row.value, row.source, row.doc)
    stdout.print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="config")
