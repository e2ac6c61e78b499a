"""Shared pytest configuration: fixtures live in tests/fixtures/ and are loaded here."""

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.broker",
    "tests.fixtures.publishers",
    "tests.fixtures.nspawn",
    "tests.fixtures.arm64",
]
