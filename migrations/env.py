"""Alembic environment for kronos-db: the work is in kronos_db.migrations.run_env."""

from logging.config import fileConfig

from alembic import context

from kronos_db.migrations import run_env

# plain `alembic` reads logging settings from alembic.ini; kronos-db configures its own
if (
    context.config.config_file_name is not None
    and context.config.attributes.get("kronos_run") is None
):
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

run_env()
