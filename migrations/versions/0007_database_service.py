"""database: backups

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 00:00:00
"""

from kronos_db.migration_sql import run_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
