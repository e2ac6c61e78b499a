"""Service: the daemon and its host.

Owns the daemon (:mod:`edge.service.daemon`), the capture loop and frame sources, the
configuration schema and loading, systemd notification and the watchdog gate, signals
and logging.

May import: the core, vision, recognition, watchlist and delivery: the service wires
everything. Never evaluation, dev or the commands.
"""
