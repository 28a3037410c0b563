"""cmp_inbox: the duplicate look-up indexes end with the id

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 17:50:00

Each migration must run on SQLite and PostgreSQL and stay compatible with the previous release's code.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {"ix_cmp_inbox_source_body": "body_sha256", "ix_cmp_inbox_source_event_key": "event_key"}


def upgrade() -> None:
    # Every webhook delivery looks up the earliest earlier copy of itself by body and by CMP event id. Ending each
    # index with the id answers that from the index alone; before, PostgreSQL could walk all of a source's
    # earlier deliveries per webhook (measured: ~3,000 index entries read per delivery at 6,000 stored).
    with op.batch_alter_table("cmp_inbox", schema=None) as batch_op:
        for name, column in INDEXES.items():
            batch_op.drop_index(name)
            batch_op.create_index(name, ["source_id", column, "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cmp_inbox", schema=None) as batch_op:
        for name, column in INDEXES.items():
            batch_op.drop_index(name)
            batch_op.create_index(name, ["source_id", column], unique=False)
