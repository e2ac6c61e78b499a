"""console trail hash chain

The console's audit trail becomes tamper-evident: ``prev_hash`` and ``hash`` on every
row (computed here for the rows written before this revision, in id order), with
``prev_hash`` unique so the chain cannot fork.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from edge.console.trail import GENESIS, row_hash

    with op.batch_alter_table("console_audit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    audit = sa.table("console_audit", sa.column("id", sa.Integer), sa.column("at", sa.Float),
                     sa.column("actor", sa.String), sa.column("event", sa.String),
                     sa.column("detail", sa.Text), sa.column("prev_hash", sa.String),
                     sa.column("hash", sa.String))  # fmt: skip
    conn = op.get_bind()
    prev = GENESIS
    rows = conn.execute(sa.select(audit.c.id, audit.c.at, audit.c.actor, audit.c.event,
                                  audit.c.detail).order_by(audit.c.id)).all()  # fmt: skip
    for row_id, at, actor, event, detail in rows:
        digest = row_hash(float(at), actor, event, detail, prev)
        conn.execute(sa.update(audit).where(audit.c.id == row_id)
                     .values(prev_hash=prev, hash=digest))  # fmt: skip
        prev = digest
    with op.batch_alter_table("console_audit", schema=None) as batch_op:
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_console_audit_prev_hash"), ["prev_hash"])


def downgrade() -> None:
    with op.batch_alter_table("console_audit", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_console_audit_prev_hash"), type_="unique")
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
