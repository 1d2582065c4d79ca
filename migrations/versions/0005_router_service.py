"""router-service: routes and rate_limits

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 00:00:00
"""

from kronos_db.migration_sql import run_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
