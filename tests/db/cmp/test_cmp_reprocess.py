"""Failed CMP deliveries processed again after the cause is fixed (hub.cmp.reprocess, `hub cmp reprocess`): on
the existing inbox row, with the source's current configuration, exactly as a fresh delivery; repeats become
duplicates, rows that still fail keep the new reason, each row on its own, dry runs write nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.app import create_app
from hub.cli import main
from hub.cmp.models import CmpInboxItem
from hub.cmp.reprocess import ReprocessSummary, UnknownSource, reprocess_failed
from hub.cmp.sources import update_source
from hub.config import Settings
from hub.consent.models import ConsentRecord
from hub.consent.services import add_purpose, current_consent, verify_projection
from hub.db import utcnow
from hub.encryption import FieldEncryptor
from hub.profiles.models import Profile
from tests.support.databases import TestDatabase
from tests.web.cmp.test_cmp_webhooks import generic_body, make_source, post_hmac

EMAIL = "ann@example.com"


@pytest.fixture
def encryptor(app: Flask) -> FieldEncryptor:
    return app.extensions["hub.encryptor"]


@pytest.fixture
def generic(db_session: Session, encryptor: FieldEncryptor) -> Any:
    return make_source(db_session, encryptor, "shop-cmp", "generic", "hmac")


def rows(session: Session) -> list[CmpInboxItem]:
    session.expire_all()
    return list(session.scalars(select(CmpInboxItem).order_by(CmpInboxItem.id)))


def records(session: Session) -> list[ConsentRecord]:
    session.expire_all()
    return list(session.scalars(select(ConsentRecord).order_by(ConsentRecord.id)))


def count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def run(session: Session, encryptor: FieldEncryptor, settings: Settings, **kw: Any) -> ReprocessSummary:
    kw.setdefault("now", utcnow())
    return reprocess_failed(session, encryptor, settings, **kw)


def fail(client: FlaskClient, source: str, body: Any) -> None:
    response = post_hmac(client, source, body)
    assert response.status_code == 400, response.get_json()


def newsletter_body(**changes: Any) -> dict[str, Any]:
    return generic_body(purposes={"newsletter": "granted", "ad_user_data": "granted"}, **changes)


# -- the library ----------------------------------------------------------------------------------------------


def test_an_unknown_purpose_is_processed_once_the_purpose_exists(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, settings: Settings, generic: Any
) -> None:
    fail(client, "shop-cmp", newsletter_body())
    [item] = rows(db_session)
    assert (item.status, item.event_key) == ("failed", None)
    assert "purposes.newsletter" in item.error

    # Nothing has changed yet: it fails again, for the same reason.
    again = run(db_session, encryptor, settings)
    assert [(r.inbox_id, r.old_status, r.new_status) for r in again.rows] == [(item.id, "failed", "failed")]
    assert "purposes.newsletter" in (again.rows[0].reason or "")
    assert count(db_session, Profile) == 0  # the attempt's identity work was rolled back

    add_purpose(db_session, "newsletter", now=utcnow())
    now = utcnow()
    summary = run(db_session, encryptor, settings, now=now)
    assert [(r.inbox_id, r.source, r.new_status) for r in summary.rows] == [(item.id, "shop-cmp", "processed")]
    assert summary.counts == {"processed": 1}
    assert summary.records == 2

    [item] = rows(db_session)
    assert (item.status, item.error, item.event_key) == ("processed", None, "cmp-evt-123")
    assert item.processed_at is not None
    assert abs(item.processed_at.replace(tzinfo=UTC) - now) < timedelta(seconds=1)
    ledger = records(db_session)
    assert {(r.purpose, r.status) for r in ledger} == {("newsletter", "granted"), ("ad_user_data", "granted")}
    assert {r.source for r in ledger} == {"cmp:shop-cmp"}
    assert {r.source_event_id for r in ledger} == {"cmp-evt-123"}
    assert {r.proof["inbox_id"] for r in ledger} == {item.id}
    assert {r.proof["body_sha256"] for r in ledger} == {item.body_sha256}
    profile_id = ledger[0].profile_id
    states = current_consent(db_session, profile_id, datetime.now(UTC))
    assert states["newsletter"]["status"] == "granted"
    assert verify_projection(db_session) == []

    # A second run finds nothing to do and changes nothing.
    second = run(db_session, encryptor, settings)
    assert second.rows == ()
    assert len(records(db_session)) == 2
    assert [(i.status, i.error) for i in rows(db_session)] == [("processed", None)]


def test_a_fixed_purpose_map_applies_and_notes_are_kept(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, settings: Settings, generic: Any
) -> None:
    fail(client, "shop-cmp", generic_body(purposes={"legacy_ads": "granted"}))
    update_source(
        db_session, encryptor, generic.id, settings={"purpose_map": {"legacy_ads": "ad_user_data"}}, now=utcnow()
    )
    # A second delivery whose purposes are all denied by nobody: processed with a note.
    fail(client, "shop-cmp", generic_body(id="evt-2", purposes={"legacy_ads": "denied"}, subject={}))

    summary = run(db_session, encryptor, settings)
    first, second = rows(db_session)
    assert [r.new_status for r in summary.rows] == ["processed", "failed"]
    assert first.status == "processed"
    assert [(r.purpose, r.status, r.proof["inbox_id"]) for r in records(db_session)] == [
        ("ad_user_data", "granted", first.id)
    ]
    assert second.status == "failed"
    assert "subject" in second.error
    assert verify_projection(db_session) == []


def test_a_malformed_body_stays_failed_with_the_reason(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, settings: Settings, generic: Any
) -> None:
    fail(client, "shop-cmp", b'{"id": "evt-1", "collected_at": ')
    [item] = rows(db_session)
    summary = run(db_session, encryptor, settings)
    [row] = summary.rows
    assert (row.inbox_id, row.old_status, row.new_status) == (item.id, "failed", "failed")
    assert "not valid JSON" in (row.reason or "")
    [item] = rows(db_session)
    assert (item.status, item.event_key) == ("failed", None)
    assert "not valid JSON" in item.error
    assert count(db_session, ConsentRecord) == 0


def test_an_event_delivered_successfully_meanwhile_makes_the_failed_row_a_duplicate(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, settings: Settings, generic: Any
) -> None:
    body = newsletter_body()
    fail(client, "shop-cmp", body)
    add_purpose(db_session, "newsletter", now=utcnow())
    # The CMP retried after the fix: a new row, processed.
    assert post_hmac(client, "shop-cmp", body).get_json()["status"] == "processed"
    failed, processed = rows(db_session)
    before = [(r.id, r.proof["inbox_id"]) for r in records(db_session)]

    summary = run(db_session, encryptor, settings)
    assert [(r.inbox_id, r.new_status) for r in summary.rows] == [(failed.id, "duplicate")]
    assert f"delivery {processed.id}" in (summary.rows[0].reason or "")
    failed, processed = rows(db_session)
    assert failed.status == "duplicate"
    assert f"inbox item {processed.id}" in failed.error
    assert failed.event_key == "cmp-evt-123"
    assert [(r.id, r.proof["inbox_id"]) for r in records(db_session)] == before  # nothing recorded twice
    assert {proof for _, proof in before} == {processed.id}
    assert verify_projection(db_session) == []


def test_the_same_cmp_event_id_with_another_body_is_a_duplicate(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, settings: Settings, generic: Any
) -> None:
    fail(client, "shop-cmp", newsletter_body(region="FR"))  # differs from the later body only in its region
    add_purpose(db_session, "newsletter", now=utcnow())
    assert post_hmac(client, "shop-cmp", newsletter_body()).get_json()["status"] == "processed"
    failed, processed = rows(db_session)
    assert failed.body_sha256 != processed.body_sha256
    [row] = run(db_session, encryptor, settings).rows
    assert row.new_status == "duplicate"
    assert rows(db_session)[0].status == "duplicate"
    assert {r.proof["inbox_id"] for r in records(db_session)} == {processed.id}


def test_two_failed_copies_of_one_delivery_process_once(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, settings: Settings, generic: Any
) -> None:
    body = newsletter_body()
    fail(client, "shop-cmp", body)
    fail(client, "shop-cmp", body)
    add_purpose(db_session, "newsletter", now=utcnow())
    summary = run(db_session, encryptor, settings)
    first, second = rows(db_session)
    assert [(r.inbox_id, r.new_status) for r in summary.rows] == [(first.id, "processed"), (second.id, "duplicate")]
    assert {r.proof["inbox_id"] for r in records(db_session)} == {first.id}
    assert len(records(db_session)) == 2


def test_source_ids_and_limit_choose_the_rows(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, settings: Settings, generic: Any
) -> None:
    make_source(db_session, encryptor, "other-cmp", "generic", "hmac")
    fail(client, "shop-cmp", newsletter_body(id="a"))
    fail(client, "other-cmp", newsletter_body(id="b"))
    fail(client, "shop-cmp", newsletter_body(id="c"))
    add_purpose(db_session, "newsletter", now=utcnow())
    _a, b, c = rows(db_session)

    only_other = run(db_session, encryptor, settings, source="other-cmp")
    assert [(r.inbox_id, r.source, r.new_status) for r in only_other.rows] == [(b.id, "other-cmp", "processed")]
    assert [i.status for i in rows(db_session)] == ["failed", "processed", "failed"]

    by_id = run(db_session, encryptor, settings, ids=[c.id, b.id, 999_999])
    assert [(r.inbox_id, r.new_status) for r in by_id.rows] == [
        (b.id, "skipped"),
        (c.id, "processed"),
        (999_999, "skipped"),
    ]
    assert "not failed" in (by_id.rows[0].reason or "")
    assert [i.status for i in rows(db_session)] == ["failed", "processed", "processed"]

    with pytest.raises(UnknownSource):
        run(db_session, encryptor, settings, source="nobody")
    assert run(db_session, encryptor, settings, source="shop-cmp", limit=1).counts == {"processed": 1}
    assert [i.status for i in rows(db_session)] == ["processed", "processed", "processed"]


def test_a_disabled_source_is_skipped(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, settings: Settings, generic: Any
) -> None:
    fail(client, "shop-cmp", newsletter_body())
    add_purpose(db_session, "newsletter", now=utcnow())
    update_source(db_session, encryptor, generic.id, enabled=False, now=utcnow())
    [row] = run(db_session, encryptor, settings).rows
    assert (row.new_status, row.reason) == ("skipped", "the source 'shop-cmp' is disabled")
    [item] = rows(db_session)
    assert item.status == "failed"
    assert "purposes.newsletter" in item.error
    assert count(db_session, ConsentRecord) == 0


def test_one_row_failing_never_undoes_another(
    client: FlaskClient,
    db_session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    generic: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fail(client, "shop-cmp", newsletter_body(id="bad", subject={"email": "bea@example.com"}))
    fail(client, "shop-cmp", newsletter_body(id="good"))
    add_purpose(db_session, "newsletter", now=utcnow())

    from hub.cmp import services

    real = services.record_consent

    def broken_for_bad(*args: Any, **kwargs: Any) -> Any:
        if kwargs["source_event_id"] == "bad":
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr("hub.cmp.services.record_consent", broken_for_bad)
    summary = run(db_session, encryptor, settings)
    assert [r.new_status for r in summary.rows] == ["failed", "processed"]
    bad, good = rows(db_session)
    assert (bad.status, good.status) == ("failed", "processed")
    assert "internal error: RuntimeError: disk on fire" in bad.error
    assert {r.proof["inbox_id"] for r in records(db_session)} == {good.id}
    assert count(db_session, Profile) == 1  # the failed row's new profile was rolled back with its attempt
    assert verify_projection(db_session) == []


def test_a_dry_run_reports_and_writes_nothing(
    client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, settings: Settings, generic: Any
) -> None:
    body = newsletter_body()
    fail(client, "shop-cmp", body)
    fail(client, "shop-cmp", body)
    fail(client, "shop-cmp", b"not json")
    add_purpose(db_session, "newsletter", now=utcnow())
    before = [(i.id, i.status, i.error, i.event_key, i.processed_at) for i in rows(db_session)]

    summary = run(db_session, encryptor, settings, dry_run=True)
    assert summary.dry_run
    # A later row sees what the earlier ones would have done.
    assert [r.new_status for r in summary.rows] == ["processed", "duplicate", "failed"]
    assert summary.records == 2
    assert [(i.id, i.status, i.error, i.event_key, i.processed_at) for i in rows(db_session)] == before
    assert count(db_session, ConsentRecord) == 0
    assert count(db_session, Profile) == 0

    assert [r.new_status for r in run(db_session, encryptor, settings).rows] == ["processed", "duplicate", "failed"]


# -- the command line ------------------------------------------------------------------------------------------


@pytest.fixture
def hub_app(fresh_database: TestDatabase, settings: Settings) -> Iterator[Flask]:
    application = create_app(settings.with_overrides(database_url=fresh_database.url))
    try:
        yield application
    finally:
        application.extensions["hub.engine"].dispose()


@pytest.fixture
def env(fresh_database: TestDatabase, settings: Settings) -> dict[str, str]:
    return {
        "HUB_DATABASE_URL": fresh_database.url,
        "HUB_DATA_DIR": str(settings.data_dir),
        "HUB_ENCRYPTION_KEY": settings.encryption_keys[0],
    }


def cli(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, ["cmp", "reprocess", *args], env=env, catch_exceptions=False)


def statuses(database: TestDatabase) -> list[tuple[int, str]]:
    with Session(database.engine) as session:
        return [(i.id, i.status) for i in session.scalars(select(CmpInboxItem).order_by(CmpInboxItem.id))]


def test_cli_reprocesses_and_prints_no_identifier(
    hub_app: Flask, fresh_database: TestDatabase, env: dict[str, str]
) -> None:
    encryptor = hub_app.extensions["hub.encryptor"]
    with Session(fresh_database.engine) as session:
        make_source(session, encryptor, "shop-cmp", "generic", "hmac")
        make_source(session, encryptor, "other-cmp", "generic", "hmac")
        session.commit()
    client = hub_app.test_client()
    fail(client, "shop-cmp", newsletter_body(id="a"))
    fail(client, "other-cmp", newsletter_body(id="b", subject={"email": "bea@example.com"}))
    fail(
        client,
        "shop-cmp",
        json.dumps(
            {"id": "c", "subject": {"email": EMAIL}, "purposes": {"sale": "denied"}}
        ).encode(),  # no collected_at
    )
    [(a, _), (b, _), (c, _)] = statuses(fresh_database)

    unknown = CliRunner().invoke(main, ["cmp", "reprocess", "--source", "nobody"], env=env)
    assert unknown.exit_code == 2
    assert "no CMP source is called 'nobody'" in unknown.output

    with Session(fresh_database.engine) as session:
        add_purpose(session, "newsletter", now=utcnow())
        session.commit()

    dry = cli(["--dry-run"], env)
    assert dry.exit_code == 0, dry.output
    assert f"inbox {a}\tshop-cmp\tfailed -> processed" in dry.output
    assert "dry run, nothing written" in dry.output
    assert statuses(fresh_database) == [(a, "failed"), (b, "failed"), (c, "failed")]

    result = cli(["--source", "shop-cmp"], env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"inbox {a}\tshop-cmp\tfailed -> processed\t2 consent record(s)")
    assert lines[1].startswith(f"inbox {c}\tshop-cmp\tfailed -> failed\t")
    assert "collected_at" in lines[1]
    assert lines[2] == "2 row(s): 1 processed, 0 duplicate, 1 failed, 0 skipped; 2 consent record(s)"
    assert EMAIL not in result.output
    assert "bea@example.com" not in result.output
    assert statuses(fresh_database) == [(a, "processed"), (b, "failed"), (c, "failed")]

    rest = cli(["--id", str(b), "--id", str(a)], env)
    assert rest.exit_code == 0, rest.output
    assert f"inbox {a}\tshop-cmp\tprocessed -> skipped\tnot failed (it is processed)" in rest.output
    assert f"inbox {b}\tother-cmp\tfailed -> processed" in rest.output
    assert "bea@example.com" not in rest.output
    assert statuses(fresh_database) == [(a, "processed"), (b, "processed"), (c, "failed")]
    with Session(fresh_database.engine) as session:
        assert verify_projection(session) == []
        assert {r.proof["inbox_id"] for r in session.scalars(select(ConsentRecord))} == {a, b}

    again = cli([], env)
    assert again.exit_code == 0, again.output
    assert (
        again.output.splitlines()[-1] == "1 row(s): 0 processed, 0 duplicate, 1 failed, 0 skipped; 0 consent record(s)"
    )
