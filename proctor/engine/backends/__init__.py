"""Backends: the only code that touches a model."""
