from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.audit.models import AuditEntry
from hub.audit.services import mask_secrets, record_audit


def test_secrets_never_reach_the_audit_log(db_session: Session) -> None:
    record_audit(
        db_session,
        actor="api-key:ops",
        action="destination.update",
        object_type="destination",
        object_id=7,
        before={"name": "shop", "access_token": "EAAB-old", "token_set": True},
        after={"name": "shop", "access_token": "EAAB-new", "settings": {"basic_password": "pw"}, "app_secret": None},
    )
    db_session.flush()
    entry = db_session.scalars(select(AuditEntry)).one()
    assert entry.object_id == "7"
    assert entry.before == {"name": "shop", "access_token": "***", "token_set": True}
    assert entry.after == {
        "name": "shop",
        "access_token": "***",
        "settings": {"basic_password": "***"},
        "app_secret": None,
    }


def test_mask_secrets_walks_lists() -> None:
    assert mask_secrets([{"secret": "s", "id": 1}]) == [{"secret": "***", "id": 1}]
