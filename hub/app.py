"""The application factory: settings, database, extensions and every domain's blueprints."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from flask_htmx import HTMX
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from hub.cmp.batch import DeliveryBatcher
from hub.config import Settings, check_database_url, load_settings
from hub.db import create_db_engine, make_sessionmaker
from hub.encryption import FieldEncryptor
from hub.metrics import Metrics
from hub.web.sessions import AdminSessionInterface

ROOT = Path(__file__).resolve().parent.parent

# Blueprints as "module:attribute"; API and webhook blueprints authenticate with keys or signatures, not
# cookies, so they are exempt from CSRF (STYLE.md).
BLUEPRINTS: tuple[tuple[str, bool], ...] = (
    ("hub.web.health:bp", True),
    ("hub.web.openapi:bp", True),
    ("hub.auth.views:bp", False),
    ("hub.web.home:bp", False),
    ("hub.profiles.api:bp", True),
    ("hub.consent.api:bp", True),
    ("hub.cmp.views:bp", True),
    ("hub.events.api:bp", True),
    ("hub.delivery.api:bp", True),
    ("hub.configuration.api:bp", True),
)

csrf = CSRFProtect()
htmx = HTMX()


def _settings_from(config: Settings | Mapping[str, Any] | None) -> Settings:
    if isinstance(config, Settings):
        return config
    settings = load_settings()
    if config:
        overrides = dict(config)
        if "database_url" in overrides:
            overrides["database_url"] = check_database_url(str(overrides["database_url"]))
        settings = settings.with_overrides(**overrides)
    return settings


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    settings = _settings_from(config)
    app = Flask(
        "hub",
        root_path=str(ROOT / "hub"),
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.is_production,
        WTF_CSRF_TIME_LIMIT=None,
        JSON_SORT_KEYS=False,
    )

    app.session_interface = AdminSessionInterface()

    if settings.trusted_proxies:
        # Behind N reverse proxies the client address is in X-Forwarded-For; without this, every browser event
        # would carry the proxy's IP. Trusting more hops than really exist would let clients spoof their IP.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]

    engine = create_db_engine(settings.database_url)
    sessionmaker = make_sessionmaker(engine)
    metrics = Metrics()
    metrics.watch_database(engine)
    encryptor = FieldEncryptor(settings.encryption_keys)
    app.extensions.update(
        {
            "hub.settings": settings,
            "hub.engine": engine,
            "hub.sessionmaker": sessionmaker,
            "hub.encryptor": encryptor,
            "hub.metrics": metrics,
        }
    )
    app.extensions["hub.cmp_batcher"] = DeliveryBatcher(app.extensions)

    from hub.web import database, errors

    database.init_app(app)
    errors.init_app(app)
    csrf.init_app(app)
    htmx.init_app(app)

    for target, csrf_exempt in BLUEPRINTS:
        module_name, _, attribute = target.partition(":")
        blueprint = getattr(importlib.import_module(module_name), attribute)
        if csrf_exempt:
            csrf.exempt(blueprint)
        app.register_blueprint(blueprint)

    from hub.auth import access, oidc

    access.init_app(app)
    oidc.init_app(app, settings)
    logging.getLogger("hub").setLevel(logging.INFO)
    return app
