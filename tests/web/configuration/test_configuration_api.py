"""GET/PUT /api/v1/config: admin scope, JSON and YAML, dry runs and field errors."""

from __future__ import annotations

import pytest
import yaml
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.auth.services import create_api_key
from hub.mappings.models import EventMapping

DOC_YAML = """
version: 1
mappings:
  - source_event: order_completed
    event_name: Purchase
    action_source: website
    custom_data:
      value: properties.total
      currency: {const: EUR}
"""


@pytest.fixture
def admin(db_session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(db_session, 'ops', 'admin').secret}"}


def mappings(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(EventMapping)) or 0


def test_ingest_keys_cannot_read_or_write_config(client: FlaskClient, db_session: Session) -> None:
    ingest = {"Authorization": f"Bearer {create_api_key(db_session, 'shop', 'ingest').secret}"}
    assert client.get("/api/v1/config", headers=ingest).status_code == 403
    assert client.put("/api/v1/config", data=DOC_YAML, headers=ingest).status_code == 403
    assert client.get("/api/v1/config").status_code == 401


def test_get_json_and_yaml(client: FlaskClient, admin: dict[str, str]) -> None:
    as_json = client.get("/api/v1/config", headers=admin)
    assert as_json.status_code == 200
    document = as_json.get_json()
    assert document["version"] == 1
    assert {r["region"] for r in document["region_rules"]} >= {"EEA", "US-CA", "*"}
    as_yaml = client.get("/api/v1/config?format=yaml", headers=admin)
    assert as_yaml.mimetype == "application/yaml"
    assert yaml.safe_load(as_yaml.get_data(as_text=True)) == document
    accept = client.get("/api/v1/config", headers={**admin, "Accept": "application/yaml"})
    assert accept.mimetype == "application/yaml"


def test_put_yaml_dry_run_then_apply(client: FlaskClient, admin: dict[str, str], db_session: Session) -> None:
    headers = {**admin, "Content-Type": "application/yaml"}
    dry = client.put("/api/v1/config?dry_run=1", data=DOC_YAML, headers=headers)
    assert dry.status_code == 200
    body = dry.get_json()
    assert body["dry_run"] is True
    assert body["applied"] is False
    assert body["changes"][0] == "+ mapping order_completed"
    assert mappings(db_session) == 0
    applied = client.put("/api/v1/config", data=DOC_YAML, headers=headers)
    assert applied.status_code == 200
    assert applied.get_json()["applied"] is True
    assert mappings(db_session) == 1
    again = client.put("/api/v1/config", data=DOC_YAML, headers=headers)
    assert again.get_json()["changes"] == []


def test_put_json_with_errors_is_400_with_paths(
    client: FlaskClient, admin: dict[str, str], db_session: Session
) -> None:
    document = yaml.safe_load(DOC_YAML)
    document["mappings"][0]["custom_data"]["currency"] = {"const": "EURO"}
    response = client.put("/api/v1/config", json=document, headers=admin)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_config"
    assert "mappings[0].custom_data.currency" in error["fields"]
    assert mappings(db_session) == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("", "application/json"), ("{", "application/json"), ("a: [", "application/yaml"), ("[1]", "application/json")],
)
def test_put_unparsable_is_400(client: FlaskClient, admin: dict[str, str], body: str, content_type: str) -> None:
    response = client.put("/api/v1/config", data=body, headers={**admin, "Content-Type": content_type})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_document"
