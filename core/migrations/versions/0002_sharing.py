"""Read-only share links and forks: what kind of row a conversation is, and where it came from.

A "share" is a frozen snapshot of a conversation, opened read-only by anyone with its id.
Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default="chat"))
        batch.add_column(sa.Column("source_id", sa.String(32), nullable=True))
        batch.create_index("ix_conversations_updated_at", ["updated_at"])
