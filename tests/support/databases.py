"""Creating and dropping throwaway test databases on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from hub import migrate
from hub.db import create_db_engine

POSTGRES_URL = os.environ.get("HUB_TEST_POSTGRES_URL", "").strip()
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


@dataclass
class TestDatabase:
    __test__ = False  # not a test class, despite the name

    backend: str
    url: str
    engine: Engine
    name: str


def _admin_dsn() -> str:
    url = make_url(POSTGRES_URL).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def create_database(backend: str, directory: Path, *, migrated: bool = True) -> TestDatabase:
    if backend == "sqlite":
        path = directory / f"hub-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"
        name = str(path)
    else:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        name = f"hub_test_{worker}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = (
            make_url(POSTGRES_URL)
            .set(drivername="postgresql+psycopg", database=name)
            .render_as_string(hide_password=False)
        )
    engine = create_db_engine(url)
    db = TestDatabase(backend=backend, url=url, engine=engine, name=name)
    if migrated:
        migrate.upgrade(db.url, engine=db.engine)
    return db


def drop_database(db: TestDatabase) -> None:
    db.engine.dispose()
    if db.backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(db.name + suffix).unlink(missing_ok=True)
        return
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
