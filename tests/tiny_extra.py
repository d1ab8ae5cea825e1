"""Tiny cases: (family module of tests/tiny_registry.py)."""

CASES: dict = {}
