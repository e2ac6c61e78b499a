"""Watchlist: the deployment's safeguards.

Owns the signed, encrypted bundle format, the keys, enrolment, signed control-room
commands, the arming state machine (:mod:`edge.watchlist.deployment`), retention and the
audit chain.

May import: the core, :mod:`edge.vision` (enrolment runs the face engine) and
:mod:`edge.recognition` (a decrypted bundle becomes a matcher's :class:`Watchlist`).
Never delivery or the service: the daemon wires the deployment to the publisher.
"""
