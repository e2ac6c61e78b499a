"""Vision: the models and what runs them.

Owns the TFLite runtime, the model manifest, the embedder families, the face detector,
landmarks, alignment, the embedder, the quality gate and the :class:`FaceEngine` that
strings them together, plus the tooling that imports and fetches third-party models.

May import: the top-level core (``edge.types``, ``edge.errors``, ``edge.progress``,
``edge.uuid7``) only. Vision knows nothing of tracks, watchlists, alerts or the service.
"""
