"""Fixtures shared by every layer.

DB tests run once per backend: SQLite always, PostgreSQL when ``HUB_TEST_POSTGRES_URL`` is set. Each backend's
database is created and migrated once per session (never ``create_all``); every test then runs inside a
transaction that is rolled back, so tests see a clean, migrated schema without paying for it each time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from hub.config import Settings
from tests.support.databases import BACKENDS, TestDatabase, create_database, drop_database


@pytest.fixture(scope="session")
def encryption_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture(scope="session", params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabase]:
    """A migrated database for this backend, shared by the session's tests."""
    db = create_database(request.param, tmp_path_factory.mktemp(f"db-{request.param}"), migrated=True)
    try:
        yield db
    finally:
        drop_database(db)


@pytest.fixture
def fresh_database(database: TestDatabase, tmp_path: Path) -> Iterator[TestDatabase]:
    """A private migrated database that tests may commit to (concurrency, crash and CLI tests)."""
    db = create_database(database.backend, tmp_path, migrated=True)
    try:
        yield db
    finally:
        drop_database(db)


@pytest.fixture
def db_connection(database: TestDatabase) -> Iterator[object]:
    connection = database.engine.connect()
    transaction = connection.begin()
    try:
        yield connection
    finally:
        transaction.rollback()
        connection.close()


@pytest.fixture
def session_factory(db_connection: object) -> sessionmaker[Session]:
    # Commits inside services or requests only release a SAVEPOINT; the outer transaction is rolled back.
    return sessionmaker(bind=db_connection, join_transaction_mode="create_savepoint", expire_on_commit=False)


@pytest.fixture
def db_session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    session = session_factory()
    try:
        yield session
    finally:
        session.close()


def make_settings(tmp_path: Path, database_url: str, encryption_key: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "data_dir": tmp_path / "hub-data",
        "database_url": database_url,
        "secret_key": "test-secret-key-that-is-long-enough-0123456789",
        "encryption_keys": (encryption_key,),
        "graph_url": "http://127.0.0.1:9",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, database: TestDatabase, encryption_key: str) -> Settings:
    return make_settings(tmp_path, database.url, encryption_key)


@pytest.fixture
def app(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[Flask]:
    from hub.app import create_app

    application = create_app(settings)
    application.config.update(TESTING=True)
    own_engine = application.extensions["hub.engine"]
    application.extensions["hub.sessionmaker"] = session_factory
    try:
        yield application
    finally:
        own_engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def postgres_url() -> str | None:
    return os.environ.get("HUB_TEST_POSTGRES_URL") or None
