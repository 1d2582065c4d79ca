"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from kronos_db.migration_sql import run_sql

revision = "${up_revision}"
down_revision = ${'"%s"' % down_revision if isinstance(down_revision, str) else repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    run_sql(__file__, "upgrade")


def downgrade() -> None:
    run_sql(__file__, "downgrade")
