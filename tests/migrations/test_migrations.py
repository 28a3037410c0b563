"""Models and migrations agree, and the whole chain upgrades and downgrades on every backend."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text

from hub import migrate
from tests.support.databases import TestDatabase, create_database, drop_database


def test_head_matches_models(database: TestDatabase) -> None:
    assert migrate.is_at_head(database.engine)
    assert migrate.schema_drift(database.engine) == []


def test_single_linear_history() -> None:
    assert len(migrate.head_revisions("sqlite://")) == 1


def test_downgrade_to_base_and_back(database: TestDatabase, tmp_path: Path) -> None:
    db = create_database(database.backend, tmp_path, migrated=True)
    try:
        tables_at_head = set(inspect(db.engine).get_table_names())
        assert {"profiles", "identities", "consent_records", "events", "delivery_attempts"} <= tables_at_head

        migrate.downgrade(db.url, "base", engine=db.engine)
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}

        migrate.upgrade(db.url, engine=db.engine)
        assert set(inspect(db.engine).get_table_names()) == tables_at_head
        assert migrate.schema_drift(db.engine) == []
    finally:
        drop_database(db)


def test_every_step_downgrades_and_upgrades(database: TestDatabase, tmp_path: Path) -> None:
    """Walk the chain one revision at a time, so each downgrade() is exercised against its own upgrade()."""
    from alembic.script import ScriptDirectory

    db = create_database(database.backend, tmp_path, migrated=True)
    try:
        script = ScriptDirectory.from_config(migrate.alembic_config(db.url))
        revisions = [rev.revision for rev in script.walk_revisions()]  # head first
        for rev in revisions:
            assert migrate.current_revisions(db.engine) == {rev}
            migrate.downgrade(db.url, "-1", engine=db.engine)
        assert migrate.current_revisions(db.engine) == set()
        for _ in revisions:
            migrate.upgrade(db.url, "+1", engine=db.engine)
        assert migrate.is_at_head(db.engine)
    finally:
        drop_database(db)


def test_builtin_purposes_are_seeded(database: TestDatabase) -> None:
    with database.engine.connect() as conn:
        names = set(conn.execute(text("SELECT name FROM purposes WHERE builtin")).scalars())
    assert names == {
        "ad_user_data",
        "ad_personalization",
        "ad_storage",
        "analytics_storage",
        "sale",
        "sharing",
        "targeted_advertising",
    }
