"""backups verification and least privilege

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 00:40:58.266379
"""

from kronos_db.migration_sql import run_sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
