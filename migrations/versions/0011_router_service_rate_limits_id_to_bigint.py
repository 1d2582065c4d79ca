"""router-service: rate_limits.id to bigint, online

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 06:11:59.063623
"""

from kronos_db.migration_sql import run_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
