"""Alembic environment: runs on the connection :func:`edge.console.migrate.upgrade` passes."""

from __future__ import annotations

from alembic import context

from edge.console.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic path is supported
    raise RuntimeError("run migrations through edge.console.migrate.upgrade()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
