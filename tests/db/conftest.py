"""Fixtures for the database tests."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session


@pytest.fixture
def postgresql_session(db_session: Session) -> Session:
    """The test's session on PostgreSQL; skipped on SQLite (plans and plan caching are PostgreSQL's, and SQLite
    answers IN lists with index probes)."""
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("plans and plan caching are PostgreSQL's; SQLite answers IN lists with index probes")
    return db_session
