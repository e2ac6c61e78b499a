"""Recognition: from detections to decisions.

Owns the tracker, the matcher and the in-memory :class:`Watchlist` it searches, the
per-track decider (once per track and subject, cooldown) and the orchestrator
:mod:`edge.recognition.pipeline` that turns a frame into alert records.

May import: the core, :mod:`edge.vision` and the alert format of :mod:`edge.delivery`
(a decision becomes an :class:`~edge.types.AlertRecord`). Never the watchlist bundle,
keys or the service.
"""
