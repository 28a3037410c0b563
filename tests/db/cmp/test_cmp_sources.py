"""CMP sources: validation, encrypted secrets never read back, updates, deletion; `hub cmp add` and
`hub consent verify` on a real database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from hub.cli import main
from hub.cmp.models import CmpInboxItem, CmpSource
from hub.cmp.sources import (
    SourceError,
    create_source,
    delete_source,
    get_source,
    list_sources,
    source_secret,
    update_source,
)
from hub.config import Settings
from hub.db import make_sessionmaker, utcnow
from hub.encryption import FieldEncryptor
from tests.support.databases import TestDatabase

SECRET = "a-long-enough-secret-value"


@pytest.fixture
def encryptor(settings: Settings) -> FieldEncryptor:
    return FieldEncryptor(settings.encryption_keys)


def create(session: Session, encryptor: FieldEncryptor, **changes: Any):
    values: dict[str, Any] = {
        "name": "didomi-eu",
        "adapter": "didomi",
        "authenticator": "bearer",
        "secret": SECRET,
        "settings": {"purpose_map": {"c:facebook": "ad_user_data"}, "ip_allow_list": ["35.159.1.63"]},
        "now": utcnow(),
    }
    values.update(changes)
    return create_source(session, encryptor, **values)


def test_create_and_read_never_show_the_secret(db_session: Session, encryptor: FieldEncryptor) -> None:
    view = create(db_session, encryptor)
    assert view.secret_set is True
    assert view.as_dict() == {
        "id": view.id,
        "name": "didomi-eu",
        "adapter": "didomi",
        "authenticator": "bearer",
        "secret_set": True,
        "settings": {"purpose_map": {"c:facebook": "ad_user_data"}, "ip_allow_list": ["35.159.1.63/32"]},
        "enabled": True,
        "webhook_path": "/webhooks/cmp/didomi-eu",
    }
    assert SECRET not in repr(list_sources(db_session))
    stored = db_session.scalar(select(CmpSource.secret_encrypted))
    assert SECRET not in stored
    assert source_secret(db_session, encryptor, view.id) == SECRET
    assert get_source(db_session, "didomi-eu") == view
    assert get_source(db_session, "nope") is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "Has Spaces"}, "name"),
        ({"name": ""}, "name"),
        ({"adapter": "onetrust"}, "adapter"),
        ({"authenticator": "jwt"}, "authenticator"),
        ({"secret": "short"}, "secret"),
        ({"secret": " padded-secret-value-here "}, "secret"),
        ({"settings": {"purpose_map": {"x": "not_a_purpose"}}}, "settings.purpose_map.x"),
        ({"settings": {"purpose_map": ["x"]}}, "settings.purpose_map"),
        ({"settings": {"tcf_purpose_map": {"ad_user_data": [1, 25]}}}, "settings.tcf_purpose_map.ad_user_data"),
        ({"settings": {"tcf_purpose_map": {"ad_user_data": []}}}, "settings.tcf_purpose_map.ad_user_data"),
        ({"settings": {"ip_allow_list": ["999.1.1.1"]}}, "settings.ip_allow_list[0]"),
        ({"settings": {"forwarded_hops": -1}}, "settings.forwarded_hops"),
        ({"settings": {"colour": "blue"}}, "settings.colour"),
        ({"authenticator": "basic", "settings": {}}, "settings.basic_username"),
        ({"authenticator": "basic", "settings": {"basic_username": "a:b"}}, "settings.basic_username"),
    ],
)
def test_validation_names_the_field(
    db_session: Session, encryptor: FieldEncryptor, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(SourceError) as error:
        create(db_session, encryptor, **changes)
    assert field in error.value.fields
    assert list_sources(db_session) == []


def test_duplicate_name(db_session: Session, encryptor: FieldEncryptor) -> None:
    create(db_session, encryptor)
    with pytest.raises(SourceError) as error:
        create(db_session, encryptor)
    assert "already exists" in error.value.fields["name"]


def test_update_keeps_omitted_fields_and_rotates_the_secret(db_session: Session, encryptor: FieldEncryptor) -> None:
    view = create(db_session, encryptor)
    updated = update_source(db_session, encryptor, view.id, enabled=False, now=utcnow())
    assert (updated.enabled, updated.settings, updated.adapter) == (False, view.settings, "didomi")
    update_source(db_session, encryptor, view.id, secret="a-brand-new-secret-value", now=utcnow())
    assert source_secret(db_session, encryptor, view.id) == "a-brand-new-secret-value"
    with pytest.raises(SourceError):
        update_source(db_session, encryptor, view.id, authenticator="basic", now=utcnow())
    with pytest.raises(LookupError):
        update_source(db_session, encryptor, 999_999, enabled=True, now=utcnow())


def test_delete_only_without_deliveries(db_session: Session, encryptor: FieldEncryptor) -> None:
    kept = create(db_session, encryptor)
    gone = create(db_session, encryptor, name="spare")
    db_session.add(CmpInboxItem(source_id=kept.id, body=b"x", body_sha256="0" * 64, headers={}, status="received"))
    db_session.flush()
    with pytest.raises(SourceError, match="disable it instead"):
        delete_source(db_session, kept.id)
    delete_source(db_session, gone.id)
    assert [s.name for s in list_sources(db_session)] == ["didomi-eu"]


# -- command line ------------------------------------------------------------------------------------------


@pytest.fixture
def env(fresh_database: TestDatabase, tmp_path: Path, encryption_key: str) -> dict[str, str]:
    return {
        "HUB_DATABASE_URL": fresh_database.url,
        "HUB_DATA_DIR": str(tmp_path / "data"),
        "HUB_ENCRYPTION_KEY": encryption_key,
    }


def run(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def test_cli_cmp_add_prints_the_secret_once(env: dict[str, str], fresh_database: TestDatabase) -> None:
    result = run(["cmp", "add", "shop", "--adapter", "generic", "--auth", "hmac", "--map", "legacy=ad_user_data"], env)
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert len(secret) >= 32
    assert "/webhooks/cmp/shop" in result.stderr
    with make_sessionmaker(fresh_database.engine)() as session:
        encryptor = FieldEncryptor((env["HUB_ENCRYPTION_KEY"],))
        view = get_source(session, "shop")
        assert view is not None
        assert view.settings == {"purpose_map": {"legacy": "ad_user_data"}}
        assert source_secret(session, encryptor, view.id) == secret
    again = CliRunner().invoke(main, ["cmp", "add", "shop"], env=env)
    assert again.exit_code != 0
    assert "already exists" in again.output


def test_cli_consent_verify(env: dict[str, str], fresh_database: TestDatabase) -> None:
    result = run(["consent", "verify"], env)
    assert result.exit_code == 0, result.output
    assert "projection matches the ledger" in result.output
    now = utcnow()
    with fresh_database.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO profiles (id, created_at, updated_at) VALUES ('p1', :now, :now)"),
            {"now": now.replace(tzinfo=None) if fresh_database.backend == "sqlite" else now},
        )
        conn.execute(
            text(
                "INSERT INTO consent_records (profile_id, purpose, status, collected_at, received_at, source,"
                " source_event_id, proof) VALUES ('p1', 'ad_user_data', 'granted', :now, :now, 'api', 'e1', '{}')"
            ),
            {"now": now.replace(tzinfo=None) if fresh_database.backend == "sqlite" else now},
        )
    result = CliRunner().invoke(main, ["consent", "verify"], env=env)
    assert result.exit_code == 1
    assert "p1 ad_user_data" in result.output
