"""Conversations, their messages, and each reply's trace with its steps in chunks.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),  # sha256 of the owner token
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("settings", sa.Text, nullable=False),  # JSON
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
    )
    op.create_table(
        "messages",
        sa.Column("conversation_id", sa.String(32), sa.ForeignKey("conversations.id", ondelete="CASCADE")),
        sa.Column("id", sa.String(64)),
        sa.Column("parent", sa.String(64), nullable=False),  # "" on the main line, else its message's id
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("notice", sa.Text, nullable=True),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("conversation_id", "id"),
    )
    op.create_table(
        "traces",
        sa.Column("conversation_id", sa.String(32), sa.ForeignKey("conversations.id", ondelete="CASCADE")),
        sa.Column("trace_id", sa.String(64)),
        sa.Column("meta", sa.Text, nullable=False),  # JSON: the trace without prompt ids and steps
        sa.Column("prompt_ids", sa.LargeBinary, nullable=False),  # int32 little-endian
        sa.Column("n_steps", sa.Integer, nullable=False),  # steps saved so far
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "trace_id"),
    )
    op.create_table(
        "trace_steps",
        sa.Column("conversation_id", sa.String(32)),
        sa.Column("trace_id", sa.String(64)),
        sa.Column("chunk", sa.Integer),  # steps [16 * chunk, 16 * chunk + 16)
        sa.Column("data", sa.LargeBinary, nullable=False),  # core.tracepack
        sa.PrimaryKeyConstraint("conversation_id", "trace_id", "chunk"),
        sa.ForeignKeyConstraint(
            ["conversation_id", "trace_id"],
            ["traces.conversation_id", "traces.trace_id"],
            ondelete="CASCADE",
        ),
    )
