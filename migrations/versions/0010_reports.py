"""reports: pg_stat_statements when available, and the snapshot tables of `report snapshot`

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 00:45:00
"""

from kronos_db.migration_sql import run_sql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
