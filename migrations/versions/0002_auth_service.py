"""auth-service: sessions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 00:00:00
"""

from kronos_db.migration_sql import run_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
