"""The `hub` command line on a real database: migrations, API keys, users, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.auth.models import ApiKey, User
from hub.auth.services import find_api_key, hash_api_key
from hub.cli import main
from tests.support.databases import TestDatabase


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def env(fresh_database: TestDatabase, tmp_path: Path, encryption_key: str) -> dict[str, str]:
    return {
        "HUB_DATABASE_URL": fresh_database.url,
        "HUB_DATA_DIR": str(tmp_path / "data"),
        "HUB_ENCRYPTION_KEY": encryption_key,
    }


def test_db_check_passes_at_head_and_fails_behind(env: dict[str, str]) -> None:
    code, out = run(["db", "check"], env)
    assert code == 0, out
    assert "agree" in out

    code, out = run(["db", "downgrade", "base"], env)
    assert code == 0, out
    code, out = run(["db", "check"], env)
    assert code == 1
    assert "hub db upgrade" in out

    code, out = run(["db", "upgrade"], env)
    assert code == 0, out
    assert run(["db", "check"], env)[0] == 0


def test_api_key_is_printed_once_and_stored_hashed(env: dict[str, str], fresh_database: TestDatabase) -> None:
    result = CliRunner().invoke(main, ["api-key", "create", "--name", "shop backend", "--scope", "admin"], env=env)
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip().splitlines()[0]
    assert secret.startswith("hub_")
    with Session(fresh_database.engine) as session:
        stored = session.scalars(select(ApiKey)).one()
        assert stored.key_hash == hash_api_key(secret)
        assert secret not in (stored.key_hash, stored.prefix)
        assert stored.scope == "admin"
        found = find_api_key(session, secret)
        assert found is not None
        assert found.id == stored.id
        assert find_api_key(session, secret + "x") is None


def test_api_key_needs_a_valid_scope(env: dict[str, str]) -> None:
    code, out = run(["api-key", "create", "--name", "x", "--scope", "root"], env)
    assert code == 2
    assert "--scope" in out


def test_user_add(env: dict[str, str], fresh_database: TestDatabase) -> None:
    code, out = run(["user", "add", "Ann@Example.com", "--role", "editor"], env)
    assert code == 0, out
    code, out = run(["user", "add", "ann@example.com", "--role", "viewer"], env)
    assert code == 0, out
    with Session(fresh_database.engine) as session:
        users = session.scalars(select(User)).all()
    assert [(u.email, u.role) for u in users] == [("ann@example.com", "viewer")]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"HUB_DATABASE_URL": "mysql://root@localhost/hub"}, "HUB_DATABASE_URL uses the unsupported scheme"),
        ({"HUB_DATABASE_URL": "postgresql+psycopg://root@127.0.0.1:1/hub"}, "HUB_DATABASE_URL: cannot reach"),
        ({"HUB_ENCRYPTION_KEY": "not-a-fernet-key"}, "HUB_ENCRYPTION_KEY key #1 is not a valid Fernet key"),
        ({"HUB_ENV": "production"}, "HUB_ENV=production needs HUB_SECRET_KEY"),
    ],
)
def test_bad_configuration_is_one_line(tmp_path: Path, variables: dict[str, str], expected: str) -> None:
    """Run the real entry point: the user sees one line naming the variable and no traceback."""
    env = {"PATH": "/usr/bin:/bin", "HUB_DATA_DIR": str(tmp_path / "data"), **variables}
    proc = subprocess.run(
        [sys.executable, "-m", "hub.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
