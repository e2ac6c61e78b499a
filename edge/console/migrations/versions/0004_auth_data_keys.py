"""images under random data keys

Face crops and reference images are sealed under random AES-256 data keys (one per UTC
day of arrival, one per deployment) stored wrapped by the console's key in
``data_keys`` and deleted with the last row they encrypt (issue 21, medium 5).
``alerts.crop_key`` and ``reference_images.image_key`` name a row's key; rows written
before this revision keep NULL there and stay sealed under the console's key until they
are purged or deleted.

Revision ID: 0004_auth
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_auth"
down_revision = "0003_records"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_data_keys")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("crop_key", sa.String(length=80), nullable=True))
        batch_op.create_index(batch_op.f("ix_alerts_crop_key"), ["crop_key"], unique=False)
    with op.batch_alter_table("reference_images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_key", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reference_images", schema=None) as batch_op:
        batch_op.drop_column("image_key")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_crop_key"))
        batch_op.drop_column("crop_key")
    op.drop_table("data_keys")
