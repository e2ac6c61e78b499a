"""Dev: what only the demo and the tests use.

A throw-away PKI (:mod:`edge.dev.devpki`) and a local mosquitto with mutual TLS and the
fleet's ACL (:mod:`edge.dev.devbroker`). Never used by ``edge run`` on a device.

May import: the core only.
"""
