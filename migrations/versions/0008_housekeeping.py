"""housekeeping: session last activity, queue retries and status age (for the cron jobs)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 00:41:01.559495
"""

from kronos_db.migration_sql import run_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
