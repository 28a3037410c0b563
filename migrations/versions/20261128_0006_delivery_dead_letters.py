"""delivery: the payload of dead letters

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 15:00:00

Each migration must run on SQLite and PostgreSQL and stay compatible with the previous release's code.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dead_payload_encrypted", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("dead_payload_encrypted")
