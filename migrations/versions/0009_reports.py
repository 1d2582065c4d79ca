"""reports: pg_stat_statements when available, and the snapshot tables of `report snapshot`

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-25 00:45:00
"""

from kronos_db.migration_sql import run_sql

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
