"""The OpenAPI document describes every JSON API route the app serves."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient


def test_openapi_is_public_json(client: FlaskClient) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.json["openapi"].startswith("3.1")


def test_every_api_route_is_documented(app: Flask, client: FlaskClient) -> None:
    documented = client.get("/api/openapi.json").json["paths"]
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.endpoint.startswith("openapi."):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if method.lower() not in documented.get(path, {}):
                missing.append(f"{method} {path}")
    assert missing == [], f"undocumented API routes: {missing}"


def test_every_documented_route_exists(app: Flask, client: FlaskClient) -> None:
    served = {re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()}
    documented = client.get("/api/openapi.json").json["paths"]
    assert set(documented) - served == set()
