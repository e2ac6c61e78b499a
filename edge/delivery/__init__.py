"""Delivery: from an alert record to the control room.

Owns the alert wire format (``edge/schemas/alert.v1.json``), the encrypted SQLite
outbox and the MQTT publisher (mutual TLS, QoS 1, deduplication by ``alert_id``).

May import: the core only. Delivery knows nothing of vision, recognition, watchlists or
the service; it carries records it is given.
"""
