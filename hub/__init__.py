"""hub: a consent-aware customer data hub that forwards events to Meta's Conversions API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from hub.config import Settings

__all__ = ["create_app"]


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """The Flask app factory (imported lazily so the pure core modules don't pull in Flask)."""
    from hub.app import create_app as _create_app

    return _create_app(config)
