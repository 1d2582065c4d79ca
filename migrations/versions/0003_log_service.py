"""log-service: logs, partitioned by day

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 00:00:00
"""

from kronos_db.migration_sql import run_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
