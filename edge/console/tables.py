"""The console's tables (SQLAlchemy Core), the one description the store queries by.

The schema in a database is made by the Alembic migrations in
``edge/console/migrations`` (``edge console migrate``, run at start); a test compares
the migrated schema with these tables, so they cannot drift apart.

Times are Unix seconds (float). Face crops and reference images are AES-GCM ciphertext
(:mod:`edge.console.crypto`), never plaintext: each under a random data key (crops: one
per UTC day of arrival; reference images: one per deployment) kept in ``data_keys``
wrapped by the console's key and deleted with the last row it encrypts. JSON columns
are text written by the console after validation.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
)  # fmt: skip

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)  # fmt: skip

login_failures = sa.Table(
    "login_failures", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(200), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
)  # fmt: skip

devices = sa.Table(
    "devices", metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, default="unknown"),
    sa.Column("armed", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.String(500), nullable=False, default=""),
    sa.Column("deployment_id", sa.String(64)),
    sa.Column("window_end", sa.String(40)),
    sa.Column("status_at", sa.Float),
    sa.Column("last_seen", sa.Float),
    sa.Column("fps", sa.Float),
    sa.Column("camera", sa.String(32)),
    sa.Column("outbox_pending", sa.Integer),
    sa.Column("faces_seen", sa.Integer),
    sa.Column("stats_at", sa.Float),
)  # fmt: skip

status_history = sa.Table(
    "status_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False, index=True),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("armed", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("retained", sa.Boolean, nullable=False),
    sa.Column("status_at", sa.Float),  # the van's time: one line per status, however often seen
)  # fmt: skip

alerts = sa.Table(
    "alerts", metadata,
    sa.Column("alert_id", sa.String(36), primary_key=True),
    sa.Column("device_id", sa.String(64), nullable=False, index=True),
    sa.Column("deployment_id", sa.String(64), nullable=False, index=True),
    sa.Column("subject_id", sa.String(128), nullable=False),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("track_id", sa.Integer, nullable=False),
    sa.Column("captured_at", sa.Float, nullable=False),
    sa.Column("published_at", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("bbox", sa.String(200), nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("crop", sa.LargeBinary, nullable=True),  # AES-GCM; NULL once purged
    # The crop's data key (data_keys.name); NULL: sealed under the console key (before 0004)
    sa.Column("crop_key", sa.String(80), index=True),
    sa.Column("legal_hold", sa.Boolean, nullable=False, default=False),
    sa.Column("decision", sa.String(16)),  # what the console sent
    sa.Column("decided_by", sa.String(64)),
    sa.Column("decided_at", sa.Float),
    sa.Column("device_decision", sa.String(16)),  # what the device's audit chain records
    sa.Column("device_officer", sa.String(100)),
    sa.Column("device_seq", sa.Integer),
)  # fmt: skip

adjudications = sa.Table(
    "adjudications", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.String(36), nullable=False, index=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("officer", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # sent | acked | not_sent
    # The van's answer, from its signed audit chain: recorded | refused: <reason>
    sa.Column("answer", sa.String(48)),
    sa.Column("answer_seq", sa.Integer),
)  # fmt: skip

alert_tombstones = sa.Table(
    # The id of each purged alert, so a replay of it is refused: no face, no subject, no
    # personal data. Dropped once the alert's capture is older than the retention (an
    # alert that old is refused anyway).
    "alert_tombstones", metadata,
    sa.Column("alert_id", sa.String(36), primary_key=True),
    sa.Column("captured_at", sa.Float, nullable=False, index=True),
    sa.Column("purged_at", sa.Float, nullable=False),
)  # fmt: skip

deployments = sa.Table(
    "deployments", metadata,
    sa.Column("deployment_id", sa.String(64), primary_key=True),
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("bundle_id", sa.String(64)),
    sa.Column("location", sa.String(300), nullable=False, default=""),
    sa.Column("window_start", sa.String(40)),
    sa.Column("window_end", sa.String(40)),
    sa.Column("window_end_ts", sa.Float),
    sa.Column("watchlist_size", sa.Integer),
    sa.Column("threshold", sa.Float),
    sa.Column("state", sa.String(16), nullable=False),  # armed | ended
    sa.Column("summary", sa.Text),  # the end-of-deployment summary, validated JSON
    sa.Column("updated_at", sa.Float, nullable=False),
    # Every field above comes from the van's signed, verified audit entries (armed,
    # watchlist_loaded, deployment_summary); the seq of the summary's entry, and its end.
    sa.Column("summary_seq", sa.Integer),
    sa.Column("ended_at_ts", sa.Float),
)  # fmt: skip

audit_entries = sa.Table(
    "audit_entries", metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)  # fmt: skip

chains = sa.Table(
    "chains", metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("verified_seq", sa.Integer, nullable=False, default=0),
    sa.Column("last_hash", sa.String(64), nullable=False),
    sa.Column("last_at", sa.Float, nullable=False, default=0.0),
    sa.Column("state", sa.String(16), nullable=False),  # ok | gap | broken
    sa.Column("problem", sa.String(500)),
    sa.Column("problem_at", sa.Float),
)  # fmt: skip

reference_images = sa.Table(
    "reference_images", metadata,
    sa.Column("deployment_id", sa.String(64), primary_key=True),
    sa.Column("subject_id", sa.String(128), primary_key=True),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("image", sa.LargeBinary, nullable=False),  # AES-GCM under its data key
    sa.Column("window_end_ts", sa.Float, nullable=False),
    sa.Column("bundle_id", sa.String(64)),  # a van's signed summary names it to delete them
    # The image's data key (data_keys.name); NULL: sealed under the console key (before 0004)
    sa.Column("image_key", sa.String(80)),
)  # fmt: skip

alarms = sa.Table(
    # Conditions a person must see on every page until a supervisor clears them (a lost
    # MQTT session: messages may be gone).
    "alarms", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("raised_at", sa.Float, nullable=False),
    sa.Column("detail", sa.String(500), nullable=False),
    sa.Column("cleared_at", sa.Float),
    sa.Column("cleared_by", sa.String(64)),
)  # fmt: skip

mqtt_sessions = sa.Table(
    # Each console instance's MQTT session as it last knew it: on a (re)connect the
    # broker must still hold it, or messages acknowledged into it are lost.
    "mqtt_sessions", metadata,
    sa.Column("client_id", sa.String(128), primary_key=True),
    sa.Column("alive_at", sa.Float, nullable=False),
    sa.Column("expiry_s", sa.Integer, nullable=False),
)  # fmt: skip

data_keys = sa.Table(
    "data_keys", metadata,
    sa.Column("name", sa.String(80), primary_key=True),  # crop:<UTC day> | ref:<deployment>
    sa.Column("wrapped", sa.LargeBinary, nullable=False),  # AES-GCM under the console's key
    sa.Column("created_at", sa.Float, nullable=False),
)  # fmt: skip

console_audit = sa.Table(
    "console_audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    # Hash-chained (edge.console.trail); a unique prev_hash means the chain cannot fork.
    sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("hash", sa.String(64), nullable=False),
)  # fmt: skip
