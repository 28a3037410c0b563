"""Errors shared by the domain services."""

from __future__ import annotations

from collections.abc import Mapping


class InvalidFields(ValueError):
    """Something cannot be saved; ``errors`` maps field names (or paths) to sentences a user can act on."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = dict(errors)
