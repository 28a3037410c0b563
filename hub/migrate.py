"""Alembic, driven from hub's own configuration (``hub db upgrade|downgrade|check``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str, engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if engine is not None:
        # Reuse the caller's engine (and its SQLite settings) instead of building another one.
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(database_url: str, revision: str = "head", engine: Engine | None = None) -> None:
    command.upgrade(alembic_config(database_url, engine), revision)


def downgrade(database_url: str, revision: str, engine: Engine | None = None) -> None:
    command.downgrade(alembic_config(database_url, engine), revision)


def head_revisions(database_url: str) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    from hub.db import read_only_connection

    with read_only_connection(engine) as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def is_at_head(engine: Engine) -> bool:
    return current_revisions(engine) == head_revisions(str(engine.url))


def schema_drift(engine: Engine) -> list[tuple[object, ...]]:
    """Differences between the models and the migrated database; empty when they agree."""
    from alembic.autogenerate import compare_metadata

    import hub.models

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True, "render_as_batch": True}
        )
        return list(compare_metadata(ctx, hub.models.Base.metadata))
