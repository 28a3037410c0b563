"""events: a partial index for the scheduler's claim query

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 14:35:00

Each migration must run on SQLite and PostgreSQL and stay compatible with the previous release's code.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DUE = sa.text("status IN ('pending', 'retrying')")


def upgrade() -> None:
    # Without it PostgreSQL sorts every due row on every claim: ~0.1 s per batch at 40k waiting, growing with the
    # backlog; with it a claim reads the first rows of the index (2.5 ms measured).
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_events_due", ["next_attempt_at", "id"], unique=False, postgresql_where=DUE, sqlite_where=DUE
        )


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_due")
