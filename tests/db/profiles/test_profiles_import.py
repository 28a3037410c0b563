"""`hub import profiles FILE.csv` on a real (committed) database."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from hub.cli import main
from hub.db import make_sessionmaker
from hub.encryption import FieldEncryptor
from hub.profiles.importer import ImportHeaderError, check_header, import_profiles
from hub.profiles.models import Identity, Profile, ProfileMerge
from hub.profiles.normalize import sha256_hex
from tests.conftest import make_settings
from tests.support.databases import TestDatabase

GOOD_CSV = """email,phone,external_id,first_name,last_name,city,country,region
ann@example.com,+1 650 555 1212,crm-1,Ann,Lee,,US,US-CA
bob@example.com,,crm-2,Bob,,,,DE
,+16505551212,,,,San Francisco,,
not-an-email,,,,,,,
,,,Carl,,,,
test@test.com,,,,,,,
dora@example.com,030 901820,,,,,,
erin@example.com,030 901820,,,,,DE,
"""


def run_import(tmp_path: Path, db: TestDatabase, key: str, content: str, *args: str) -> Result:
    path = tmp_path / "people.csv"
    path.write_text(content, encoding="utf-8")
    env = {
        "HUB_DATABASE_URL": db.url,
        "HUB_ENCRYPTION_KEY": key,
        "HUB_DATA_DIR": str(tmp_path / "data"),
        "HUB_ENV": "test",
        "HUB_DEFAULT_PHONE_REGION": "",
    }
    return CliRunner().invoke(main, ["import", "profiles", str(path), *args], env=env)


def counts(db: TestDatabase) -> tuple[int, int, int]:
    with make_sessionmaker(db.engine)() as session:
        return (
            session.scalar(select(func.count()).select_from(Profile)) or 0,
            session.scalar(select(func.count()).select_from(Identity)) or 0,
            session.scalar(select(func.count()).select_from(ProfileMerge)) or 0,
        )


def test_import_reports_rows_and_is_safe_to_rerun(
    tmp_path: Path, fresh_database: TestDatabase, encryption_key: str
) -> None:
    first = run_import(tmp_path, fresh_database, encryption_key, GOOD_CSV, "--batch-size", "2")
    assert first.exit_code == 0, first.output
    assert "8 rows: 3 created, 0 merged, 1 updated, 0 unchanged, 4 rejected" in first.output
    assert "rejected: row 5: user.email: Not a valid e-mail address" in first.output
    assert "rejected: row 6: no identifier" in first.output
    assert "rejected: row 7: user.email: ignored: on the blocklist" in first.output
    assert "rejected: row 8: user.phone:" in first.output  # a national number with no country known
    assert counts(fresh_database) == (3, 7, 0)

    again = run_import(tmp_path, fresh_database, encryption_key, GOOD_CSV)
    assert again.exit_code == 0, again.output
    assert "8 rows: 0 created, 0 merged, 0 updated, 4 unchanged, 4 rejected" in again.output
    assert counts(fresh_database) == (3, 7, 0)

    with make_sessionmaker(fresh_database.engine)() as session:
        ann = session.scalar(select(Identity.profile_id).where(Identity.value_hash == sha256_hex("ann@example.com")))
        profile = session.get(Profile, ann)
        assert profile is not None
        assert profile.region == "US-CA"
        traits = FieldEncryptor([encryption_key]).decrypt_json(profile.traits_encrypted or "")
        assert traits == {"fn": "ann", "ln": "lee", "ct": "sanfrancisco", "country": "us"}


def test_import_merges_across_rows(tmp_path: Path, fresh_database: TestDatabase, encryption_key: str) -> None:
    content = "email,phone\na@shop.example,\n,+4791234567\na@shop.example,+4791234567\n"
    result = run_import(tmp_path, fresh_database, encryption_key, content)
    assert result.exit_code == 0, result.output
    assert "3 rows: 2 created, 1 merged, 1 updated, 0 unchanged, 0 rejected" in result.output
    assert counts(fresh_database) == (2, 2, 1)


def test_unknown_header_stops_before_any_row(tmp_path: Path, fresh_database: TestDatabase, encryption_key: str) -> None:
    result = run_import(tmp_path, fresh_database, encryption_key, "email,nickname\nann@example.com,annie\n")
    assert result.exit_code != 0
    assert "unknown column(s) 'nickname'" in result.output
    assert "nothing was imported" in result.output
    assert counts(fresh_database) == (0, 0, 0)


def test_rejections_beyond_the_reported_ones_are_counted(
    tmp_path: Path, fresh_database: TestDatabase, encryption_key: str
) -> None:
    content = "email\n" + "".join(f"bad-{n}\n" for n in range(60))
    result = run_import(tmp_path, fresh_database, encryption_key, content)
    assert result.exit_code == 0, result.output
    assert result.output.count("rejected: row") == 50
    assert "... and 10 more rejected rows" in result.output


def test_row_with_too_many_cells_is_rejected(tmp_path: Path, fresh_database: TestDatabase, encryption_key: str) -> None:
    result = run_import(tmp_path, fresh_database, encryption_key, 'email\n"a@shop.example",extra\n')
    assert "rejected: row 2: has 2 cells but the header names 1 columns" in result.output


def test_non_utf8_file_is_refused(tmp_path: Path, fresh_database: TestDatabase, encryption_key: str) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("email,first_name\nann@example.com,Andr\xe9\n".encode("latin-1"))
    env = {"HUB_DATABASE_URL": fresh_database.url, "HUB_ENCRYPTION_KEY": encryption_key, "HUB_ENV": "test"}
    result = CliRunner().invoke(main, ["import", "profiles", str(path)], env=env)
    assert result.exit_code != 0
    assert "not UTF-8" in result.output


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "the file is empty"),
        ([], "the file is empty"),
        (["email", "Email"], "unknown column(s) 'Email'"),
        (["email", "email"], "named twice: email"),
        (["ip", "email"], "unknown column(s) 'ip'"),
    ],
)
def test_check_header(header: list[str] | None, message: str) -> None:
    with pytest.raises(ImportHeaderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_header(header)


def test_import_function_commits_in_batches(tmp_path: Path, fresh_database: TestDatabase, encryption_key: str) -> None:
    settings = make_settings(tmp_path, fresh_database.url, encryption_key)
    progress: list[int] = []
    lines = ["email\n", *(f"p{n}@shop.example\n" for n in range(7))]
    summary = import_profiles(
        make_sessionmaker(fresh_database.engine),
        FieldEncryptor([encryption_key]),
        settings,
        iter(lines),
        batch_size=3,
        on_row=progress.append,
    )
    assert summary.created == 7
    assert progress == [1, 2, 3, 4, 5, 6, 7]
    assert counts(fresh_database) == (7, 7, 0)
