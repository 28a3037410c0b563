"""Settings come from HUB_* variables; bad values end in a message that names the variable."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from hub.config import ConfigError, load_settings


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"HUB_DATA_DIR": str(tmp_path / "data"), **values}


def test_defaults_use_an_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(env(tmp_path))
    assert settings.env == "development"
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'hub.db'}"
    assert settings.graph_url == "https://graph.facebook.com"
    assert settings.consent_grace_seconds == 120
    assert (settings.retry_base_seconds, settings.retry_max_seconds) == (30.0, 3600.0)
    assert settings.max_body_bytes == 5_000_000


def test_development_keys_are_generated_once_and_reused(tmp_path: Path) -> None:
    first = load_settings(env(tmp_path))
    second = load_settings(env(tmp_path))
    assert first.secret_key == second.secret_key
    assert first.encryption_keys == second.encryption_keys
    Fernet(first.encryption_keys[0].encode())  # a usable key
    key_file = tmp_path / "data" / "encryption_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_explicit_keys_win_and_allow_rotation(tmp_path: Path) -> None:
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = load_settings(env(tmp_path, HUB_ENCRYPTION_KEY=f"{new}, {old}", HUB_SECRET_KEY="s" * 40))
    assert settings.encryption_keys == (new, old)
    assert settings.secret_key == "s" * 40
    assert not (tmp_path / "data" / "encryption_key").exists()


def test_plain_postgresql_urls_use_psycopg3(tmp_path: Path) -> None:
    settings = load_settings(env(tmp_path, HUB_DATABASE_URL="postgresql://hub@db/hub"))
    assert settings.database_url == "postgresql+psycopg://hub@db/hub"


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"HUB_DATABASE_URL": "mysql://root@localhost/hub"}, "HUB_DATABASE_URL"),
        ({"HUB_DATABASE_URL": "not a url"}, "HUB_DATABASE_URL"),
        ({"HUB_ENCRYPTION_KEY": "too-short"}, "HUB_ENCRYPTION_KEY"),
        ({"HUB_ENCRYPTION_KEY": " , "}, "HUB_ENCRYPTION_KEY"),
        ({"HUB_CONSENT_GRACE_SECONDS": "two minutes"}, "HUB_CONSENT_GRACE_SECONDS"),
        ({"HUB_CONSENT_GRACE_SECONDS": "-5"}, "HUB_CONSENT_GRACE_SECONDS"),
        ({"HUB_RETRY_BASE_SECONDS": "0"}, "HUB_RETRY_BASE_SECONDS"),
        ({"HUB_RETRY_BASE_SECONDS": "60", "HUB_RETRY_MAX_SECONDS": "30"}, "HUB_RETRY_MAX_SECONDS"),
        ({"HUB_MAX_BODY_BYTES": "5MB"}, "HUB_MAX_BODY_BYTES"),
        ({"HUB_DEFAULT_PHONE_REGION": "XX"}, "HUB_DEFAULT_PHONE_REGION"),
        ({"HUB_GRAPH_URL": "graph.facebook.com"}, "HUB_GRAPH_URL"),
        ({"HUB_ENV": "staging"}, "HUB_ENV"),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, values: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(env(tmp_path, **values))


def test_production_refuses_to_start_without_real_keys_and_oidc(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env(tmp_path, HUB_ENV="production"))
    message = str(excinfo.value)
    for name in (
        "HUB_SECRET_KEY",
        "HUB_ENCRYPTION_KEY",
        "HUB_OIDC_ISSUER",
        "HUB_OIDC_CLIENT_ID",
        "HUB_OIDC_CLIENT_SECRET",
    ):
        assert name in message
    assert not (tmp_path / "data").exists(), "production must never generate keys"


def test_production_with_everything_set(tmp_path: Path) -> None:
    settings = load_settings(
        env(
            tmp_path,
            HUB_ENV="production",
            HUB_SECRET_KEY="k" * 48,
            HUB_ENCRYPTION_KEY=Fernet.generate_key().decode(),
            HUB_OIDC_ISSUER="https://login.example",
            HUB_OIDC_CLIENT_ID="hub",
            HUB_OIDC_CLIENT_SECRET="secret",
            HUB_ADMIN_EMAILS="Ann@Example.com, bob@example.com",
        )
    )
    assert settings.is_production
    assert settings.oidc_configured
    assert settings.admin_emails == ("ann@example.com", "bob@example.com")


def test_production_rejects_a_weak_secret_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HUB_SECRET_KEY"):
        load_settings(
            env(
                tmp_path,
                HUB_ENV="production",
                HUB_SECRET_KEY="short",
                HUB_ENCRYPTION_KEY=Fernet.generate_key().decode(),
                HUB_OIDC_ISSUER="https://login.example",
                HUB_OIDC_CLIENT_ID="hub",
                HUB_OIDC_CLIENT_SECRET="secret",
            )
        )
