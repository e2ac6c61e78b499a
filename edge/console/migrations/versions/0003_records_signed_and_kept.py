"""records: tombstones, the van's answers, signed deployments, alarms, MQTT sessions

Issue 21: purged alert ids are kept as tombstones (no personal data) so a replay is
refused; each adjudication shows the van's answer from its signed audit chain; a
deployment records the seq and end of its signed summary, and a reference image the
bundle it came with (a van's signed summary names it), a status line the van's time (one
line per status however many console instances see it); alarms (a lost MQTT session) and
each console instance's MQTT session as it last knew it.

Revision ID: 0003_records
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_records"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_tombstones",
        sa.Column("alert_id", sa.String(length=36), nullable=False),
        sa.Column("captured_at", sa.Float(), nullable=False),
        sa.Column("purged_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_alert_tombstones")),
    )
    with op.batch_alter_table("alert_tombstones", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_tombstones_captured_at"), ["captured_at"],
                              unique=False)  # fmt: skip
    op.create_table(
        "alarms",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("raised_at", sa.Float(), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("cleared_at", sa.Float(), nullable=True),
        sa.Column("cleared_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alarms")),
    )
    op.create_table(
        "mqtt_sessions",
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("alive_at", sa.Float(), nullable=False),
        sa.Column("expiry_s", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_mqtt_sessions")),
    )
    with op.batch_alter_table("adjudications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("answer", sa.String(length=48), nullable=True))
        batch_op.add_column(sa.Column("answer_seq", sa.Integer(), nullable=True))
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("summary_seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("ended_at_ts", sa.Float(), nullable=True))
    with op.batch_alter_table("reference_images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bundle_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("status_history", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("status_history", schema=None) as batch_op:
        batch_op.drop_column("status_at")
    with op.batch_alter_table("reference_images", schema=None) as batch_op:
        batch_op.drop_column("bundle_id")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("ended_at_ts")
        batch_op.drop_column("summary_seq")
    with op.batch_alter_table("adjudications", schema=None) as batch_op:
        batch_op.drop_column("answer_seq")
        batch_op.drop_column("answer")
    op.drop_table("mqtt_sessions")
    op.drop_table("alarms")
    with op.batch_alter_table("alert_tombstones", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_tombstones_captured_at"))
    op.drop_table("alert_tombstones")
