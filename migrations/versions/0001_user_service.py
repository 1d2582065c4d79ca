"""user-service: roles and users

Revision ID: 0001
Revises:
Create Date: 2026-11-25 00:00:00
"""

from kronos_db.migration_sql import run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
