"""`hub config export [FILE]` and `hub config import FILE [--dry-run]` on a real database."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hub.cli import main
from tests.support.databases import TestDatabase


@pytest.fixture
def env(fresh_database: TestDatabase, tmp_path: Path, encryption_key: str) -> dict[str, str]:
    return {
        "HUB_DATABASE_URL": fresh_database.url,
        "HUB_DATA_DIR": str(tmp_path / "data"),
        "HUB_ENCRYPTION_KEY": encryption_key,
    }


def run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_export_edit_dry_run_import(env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "hub.yaml"
    code, _out, err = run(["config", "export", str(target)], env)
    assert code == 0, err
    document = yaml.safe_load(target.read_text())
    document["mappings"] = [
        {"source_event": "signup", "event_name": "Lead", "action_source": "website", "custom_data": {}}
    ]
    target.write_text(yaml.safe_dump(document))

    code, out, err = run(["config", "import", str(target), "--dry-run"], env)
    assert code == 0, err
    assert "+ mapping signup" in out
    assert "nothing applied" in err
    code, out, _ = run(["config", "export"], env)
    assert yaml.safe_load(out)["mappings"] == []

    code, out, err = run(["config", "import", str(target)], env)
    assert code == 0, err
    code, out, _ = run(["config", "export"], env)
    assert [m["source_event"] for m in yaml.safe_load(out)["mappings"]] == ["signup"]


def test_invalid_import_exits_non_zero_naming_the_field(env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "bad.yaml"
    target.write_text("mappings:\n  - source_event: x\n    event_name: purchase\n    action_source: website\n")
    code, _out, err = run(["config", "import", str(target)], env)
    assert code == 1
    assert "mappings[0].event_name" in err
    assert "nothing was changed" in err
    code, _out, err = run(["config", "import", str(tmp_path / "missing.yaml")], env)
    assert code != 0
