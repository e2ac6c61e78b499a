"""Reference images and the wrapped data keys in the console's database: the Store's
``images`` part.

What the keys are and why: :mod:`edge.console.crypto`. Here: read one, add one (the
first writer wins when two instances create the same key at once), destroy the crop
keys no row uses any more, and destroy a deployment's reference key in the transaction
that deletes its images (:meth:`ImageStore.delete_references`).
"""

from __future__ import annotations

import math
from typing import Final

import sqlalchemy as sa

from edge.console import tables as t
from edge.console.db import scrub

CROP_KEY_PERIOD_S: Final = 86400.0
"""A crop data key per UTC day of arrival."""


def crop_key_name(received_at: float) -> str:
    return f"crop:{math.floor(received_at / CROP_KEY_PERIOD_S)}"


def reference_key_name(deployment_id: str) -> str:
    return f"ref:{deployment_id}"


class ImageStore:
    """Data keys and reference images over ``engine`` (``store.images``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    # -- data keys --------------------------------------------------------------------------

    def wrapped_key(self, name: str) -> bytes | None:
        k = t.data_keys
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(k.c.wrapped).where(k.c.name == name)).first()
            return None if row is None else bytes(row[0])

    def add_wrapped_key(self, name: str, wrapped: bytes, now: float) -> bool:
        """Store a new wrapped key; False if one of that name exists (another writer's)."""
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(t.data_keys).values(name=name, wrapped=wrapped,
                                                           created_at=now))  # fmt: skip
        except sa.exc.IntegrityError:
            return False
        return True

    def shred_crop_keys(self, before_period: int) -> list[str]:
        """Delete the crop key of every day before ``before_period`` that no alert uses."""
        k, a = t.data_keys, t.alerts
        unused = sa.select(k.c.name).where(
            k.c.name.like("crop:%"),
            ~sa.exists().where(a.c.crop_key == k.c.name))  # fmt: skip
        with self._engine.begin() as conn:
            names = [str(n) for (n,) in conn.execute(unused)
                     if str(n)[5:].lstrip("-").isdigit() and int(str(n)[5:]) < before_period]
            if names:
                conn.execute(sa.delete(k).where(k.c.name.in_(names)))
        if names:
            scrub(self._engine)
        return names

    # -- reference images (each deployment's under its own key) -------------------------

    def put_reference(self, deployment_id: str, subject_id: str, category: str,
                      image: bytes, window_end_ts: float, image_key: str | None = None,
                      bundle_id: str | None = None) -> None:  # fmt: skip
        r = t.reference_images
        where = sa.and_(r.c.deployment_id == deployment_id, r.c.subject_id == subject_id)
        values = {"category": category, "image": image, "window_end_ts": window_end_ts,
                  "image_key": image_key, "bundle_id": bundle_id}  # fmt: skip
        with self._engine.begin() as conn:
            if conn.execute(sa.update(r).where(where).values(**values)).rowcount == 0:
                conn.execute(sa.insert(r).values(deployment_id=deployment_id,
                                                  subject_id=subject_id, **values))  # fmt: skip

    def reference(self, deployment_id: str, subject_id: str) -> bytes | None:
        sealed = self.reference_sealed(deployment_id, subject_id)
        return None if sealed is None else sealed[0]

    def reference_sealed(self, deployment_id: str,
                         subject_id: str) -> tuple[bytes, str | None] | None:  # fmt: skip
        """(the sealed image, the name of its data key), or None."""
        r = t.reference_images
        q = sa.select(r.c.image, r.c.image_key).where(r.c.deployment_id == deployment_id,
                                                      r.c.subject_id == subject_id)  # fmt: skip
        with self._engine.connect() as conn:
            row = conn.execute(q).first()
            return None if row is None else (bytes(row[0]), row[1])

    def reference_keys(self, deployment_ids: set[str]) -> set[tuple[str, str]]:
        """Which (deployment, subject) pairs have a reference image (no image read)."""
        r = t.reference_images
        if not deployment_ids:
            return set()
        q = sa.select(r.c.deployment_id, r.c.subject_id).where(
            r.c.deployment_id.in_(sorted(deployment_ids)))
        with self._engine.connect() as conn:
            return {(str(d), str(sid)) for d, sid in conn.execute(q)}

    def reference_deployments(self) -> dict[str, tuple[int, float]]:
        r = t.reference_images
        q = sa.select(r.c.deployment_id, sa.func.count(), sa.func.max(r.c.window_end_ts)
                      ).group_by(r.c.deployment_id)  # fmt: skip
        with self._engine.connect() as conn:
            return {str(d): (int(n), float(e)) for d, n, e in conn.execute(q)}

    def delete_references(self, deployment_id: str, bundle_id: str | None = None) -> int:
        """Delete a deployment's reference images (with ``bundle_id`` only those imported
        with that bundle: a van's signed summary names the bundle it ended) and, in the same
        transaction, once none of the deployment's images is left, the data key they were
        sealed under (then scrub): no copy of them decrypts afterwards."""
        r, k = t.reference_images, t.data_keys
        cond = r.c.deployment_id == deployment_id
        if bundle_id is not None:
            cond = sa.and_(cond, r.c.bundle_id == bundle_id)
        with self._engine.begin() as conn:
            n = conn.execute(sa.delete(r).where(cond)).rowcount
            left = conn.execute(sa.select(sa.func.count()).select_from(r).where(
                r.c.deployment_id == deployment_id)).scalar_one()  # fmt: skip
            key = 0
            if not left:
                key = conn.execute(sa.delete(k).where(
                    k.c.name == reference_key_name(deployment_id))).rowcount
        if n or key:
            scrub(self._engine)
        return int(n)
