"""Configuration from ``HUB_*`` environment variables (CONTRACT.md, "Configuration").

Everything the app needs is resolved once into a frozen :class:`Settings`. Bad configuration raises
:class:`ConfigError`, whose message names the variable, so ``hub`` can print one line instead of a traceback.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

SUPPORTED_DB_SCHEMES = ("sqlite", "postgresql")


class ConfigError(Exception):
    """A configuration problem a user can fix; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    data_dir: Path = Path("hub-data")
    database_url: str = ""
    secret_key: str = ""
    encryption_keys: tuple[str, ...] = ()
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    admin_emails: tuple[str, ...] = ()
    graph_url: str = "https://graph.facebook.com"
    consent_grace_seconds: int = 120
    default_phone_region: str | None = None
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    max_body_bytes: int = 5_000_000
    trusted_proxies: int = 0
    # Not part of the public contract: knobs for tests and embedding.
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def oidc_configured(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_client_id and self.oidc_client_secret)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


def check_database_url(url: str, variable: str = "HUB_DATABASE_URL") -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{variable} is not a database URL: {url!r}") from None
    if parsed.get_backend_name() not in SUPPORTED_DB_SCHEMES:
        raise ConfigError(
            f"{variable} uses the unsupported scheme {parsed.drivername!r}; "
            "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        )
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # Plain postgresql:// would pick psycopg2, which hub does not ship; psycopg 3 is the driver.
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def check_fernet_keys(raw: str, variable: str = "HUB_ENCRYPTION_KEY") -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keys:
        raise ConfigError(f"{variable} is empty; it needs at least one Fernet key")
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode())
        except ValueError:
            raise ConfigError(
                f"{variable} key #{position} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes; make one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
            ) from None
    return keys


def _dev_secret(data_dir: Path, filename: str, make: str) -> str:
    """Read a development key from the data dir, creating it once so restarts keep sessions and data readable."""
    path = data_dir / filename
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = Fernet.generate_key().decode() if make == "fernet" else secrets.token_urlsafe(48)
    # Created with 0600 so other local users cannot read the keys that protect PII at rest.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings from the environment, generating development keys when allowed."""
    env = os.environ if env is None else env
    hub_env = env.get("HUB_ENV", "development").strip() or "development"
    if hub_env not in ("development", "production", "test"):
        raise ConfigError(f"HUB_ENV must be 'development' or 'production', got {hub_env!r}")
    production = hub_env == "production"
    data_dir = Path(env.get("HUB_DATA_DIR") or "hub-data").expanduser()

    raw_db = env.get("HUB_DATABASE_URL") or f"sqlite:///{(data_dir / 'hub.db').as_posix()}"
    database_url = check_database_url(raw_db)

    missing: list[str] = []
    secret_key = env.get("HUB_SECRET_KEY", "").strip()
    raw_keys = env.get("HUB_ENCRYPTION_KEY", "").strip()
    if production:
        if not secret_key:
            missing.append("HUB_SECRET_KEY")
        if not raw_keys:
            missing.append("HUB_ENCRYPTION_KEY")
        for name in ("HUB_OIDC_ISSUER", "HUB_OIDC_CLIENT_ID", "HUB_OIDC_CLIENT_SECRET"):
            if not env.get(name):
                missing.append(name)
        if missing:
            raise ConfigError("HUB_ENV=production needs " + ", ".join(missing) + " to be set")
    else:
        secret_key = secret_key or _dev_secret(data_dir, "secret_key", "token")
        raw_keys = raw_keys or _dev_secret(data_dir, "encryption_key", "fernet")
    if production and len(secret_key) < 32:
        raise ConfigError("HUB_SECRET_KEY must be at least 32 characters in production")
    encryption_keys = check_fernet_keys(raw_keys)

    graph_url = (env.get("HUB_GRAPH_URL") or "https://graph.facebook.com").rstrip("/")
    if not graph_url.startswith(("http://", "https://")):
        raise ConfigError(f"HUB_GRAPH_URL must be an http(s) URL, got {graph_url!r}")

    retry_base = _float(env, "HUB_RETRY_BASE_SECONDS", 30.0)
    retry_max = _float(env, "HUB_RETRY_MAX_SECONDS", 3600.0)
    if retry_max < retry_base:
        raise ConfigError("HUB_RETRY_MAX_SECONDS must not be smaller than HUB_RETRY_BASE_SECONDS")

    phone_region = (env.get("HUB_DEFAULT_PHONE_REGION") or "").strip().upper() or None
    if phone_region is not None:
        import phonenumbers

        if phone_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(
                f"HUB_DEFAULT_PHONE_REGION must be an ISO 3166-1 alpha-2 country code, got {phone_region!r}"
            )

    return Settings(
        env=hub_env,
        data_dir=data_dir,
        database_url=database_url,
        secret_key=secret_key,
        encryption_keys=encryption_keys,
        oidc_issuer=env.get("HUB_OIDC_ISSUER") or None,
        oidc_client_id=env.get("HUB_OIDC_CLIENT_ID") or None,
        oidc_client_secret=env.get("HUB_OIDC_CLIENT_SECRET") or None,
        admin_emails=tuple(e.strip().lower() for e in (env.get("HUB_ADMIN_EMAILS") or "").split(",") if e.strip()),
        graph_url=graph_url,
        consent_grace_seconds=_int(env, "HUB_CONSENT_GRACE_SECONDS", 120),
        default_phone_region=phone_region,
        retry_base_seconds=retry_base,
        retry_max_seconds=retry_max,
        max_body_bytes=_int(env, "HUB_MAX_BODY_BYTES", 5_000_000),
        trusted_proxies=_int(env, "HUB_TRUSTED_PROXIES", 0),
    )
