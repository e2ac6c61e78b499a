"""Live facial recognition edge appliance."""

__version__ = "0.1.0"
