"""The CMP webhooks' group commit (hub.cmp.batch): a batch answers every delivery exactly as the one-by-one path
does and leaves the same ledger, projection and inbox; what it cannot take goes one by one; the leader/follower
hand-off batches concurrent submissions and never loses or repeats one."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.cmp.auth import sign_hmac
from hub.cmp.batch import Answer, Delivery, GroupCommit, process_batch
from hub.cmp.models import CmpInboxItem, CmpSource
from hub.cmp.services import inbox_body
from hub.cmp.sources import update_source
from hub.consent.models import ConsentRecord, ConsentState
from hub.consent.services import verify_projection
from hub.db import utcnow
from hub.encryption import FieldEncryptor
from hub.profiles.models import Profile
from tests.web.cmp.test_cmp_webhooks import SECRET, make_source


@pytest.fixture
def encryptor(app: Flask) -> FieldEncryptor:
    return app.extensions["hub.encryptor"]


def body(prefix: str, event: str, collected_at: str, subject: dict[str, str], **purposes: str) -> bytes:
    people = {key: f"{prefix}{value}" for key, value in subject.items()}
    return json.dumps(
        {
            "id": f"{prefix}{event}",
            "collected_at": collected_at,
            "subject": people,
            "region": "DE",
            "purposes": purposes,
        }
    ).encode()


def earlier(prefix: str) -> bytes:
    return body(prefix, "e0", "2026-11-28T08:00:00Z", {"email": "eve@example.com"}, sale="denied")


def scenario(prefix: str) -> list[tuple[str, bytes, str]]:
    """(source or "nope", body, secret) per delivery: repeats (by body, by event id) of a delivery stored before,
    new people, a person twice out of order, repeats within the batch, refusals, and a body only the one-by-one
    path answers."""
    ann = {"email": "ann@example.com", "external_id": "42"}
    first = body(prefix, "e1", "2026-11-28T10:00:00Z", ann, ad_user_data="granted", ad_personalization="denied")
    return [
        ("", earlier(prefix), SECRET),  # stored before, by the one-by-one path
        ("", body(prefix, "e0", "2026-11-28T12:00:00Z", {"email": "eve@example.com"}, sale="granted"), SECRET),
        ("", first, SECRET),
        ("", body(prefix, "e2", "2026-11-28T10:00:00Z", {"email": "bob@example.com"}, ad_user_data="granted"), SECRET),
        ("", body(prefix, "e3", "2026-11-28T10:30:00Z", {"email": "ann@example.com"}, ad_user_data="denied"), SECRET),
        ("", body(prefix, "e4", "2026-11-28T09:00:00Z", {"external_id": "42"}, ad_user_data="granted"), SECRET),
        ("", first, SECRET),  # the same body again
        ("", body(prefix, "e2", "2026-11-28T11:00:00Z", {"email": "bob@example.com"}, ad_storage="granted"), SECRET),
        ("", b"{not json", SECRET),
        ("", body(prefix, "e5", "2026-11-28T10:00:00Z", {"email": "cy@example.com"}, ad_storage="denied"), "wrong"),
        ("nope", body(prefix, "e6", "2026-11-28T10:00:00Z", {"email": "dee@example.com"}, ad_storage="denied"), SECRET),
        ("", body(prefix, "e8", "2026-11-28T10:00:00Z", {"phone": "+49 30 1234567"}, ad_storage="granted"), SECRET),
    ]


def deliveries(source: str, prefix: str) -> list[Delivery]:
    now = int(time.time())
    return [
        Delivery(
            source_name=source if suffix != "nope" else "nope",
            body=data,
            headers={"X-Hub-Signature": sign_hmac(secret.encode(), data, now), "Content-Type": "application/json"},
            remote_addr="127.0.0.1",
            received_at=utcnow(),
        )
        for suffix, data, secret in scenario(prefix)
    ]


def post(client: FlaskClient, delivery: Delivery) -> tuple[int, dict[str, Any]]:
    response = client.post(f"/webhooks/cmp/{delivery.source_name}", data=delivery.body, headers=dict(delivery.headers))
    return response.status_code, response.get_json()


def run_batch(app: Flask, batch: Sequence[Delivery]) -> list[Answer | None]:
    extensions = app.extensions
    return process_batch(extensions["hub.sessionmaker"], extensions["hub.encryptor"], extensions["hub.settings"], batch)


def as_response(answer: Answer) -> tuple[int, dict[str, Any]]:
    if answer.error is not None:
        return answer.error.status, {"error": {"code": answer.error.code}}
    assert answer.outcome is not None
    return 200, answer.outcome.as_dict()


class Labels:
    """Stable names for ids that differ between two runs of one scenario (first seen, first named)."""

    def __init__(self) -> None:
        self.names: dict[object, str] = {}

    def __call__(self, kind: str, value: object) -> str | None:
        if value is None:
            return None
        return self.names.setdefault((kind, value), f"{kind}{sum(1 for k, _ in self.names if k == kind)}")


def snapshot(
    session: Session, source_name: str, prefix: str, answers: Sequence[tuple[int, dict[str, Any]]]
) -> dict[str, Any]:
    """Answers, ledger, projection, merges and inbox of one run, with ids replaced by what they stand for (inbox
    rows by CMP event id and status, people by order of appearance) so two runs compare equal."""
    session.expire_all()
    label = Labels()
    source_id = session.scalar(select(CmpSource.id).where(CmpSource.name == source_name))
    items = session.scalars(select(CmpInboxItem).where(CmpInboxItem.source_id == source_id)).all()
    named = {item.id: f"{(item.event_key or '-').removeprefix(prefix)}/{item.status}" for item in items}
    arrival = {item.id: item.received_at for item in items}

    def ids_named(text: str) -> str:
        return re.sub(r"(inbox item|delivery) (\d+)", lambda match: f"{match[1]} {named[int(match[2])]}", text)

    summary = []
    for status, answer in answers:
        if status != 200:
            summary.append((status, answer["error"]["code"]))
            continue
        notes = tuple(ids_named(note) for note in answer["notes"])
        summary.append((status, answer["status"], answer["records"], label("p", answer["profile_id"]), notes))
    records = session.scalars(
        select(ConsentRecord).where(ConsentRecord.source == f"cmp:{source_name}").order_by(ConsentRecord.id)
    )
    ledger = sorted(
        (
            label("p", r.profile_id),
            r.purpose,
            r.status,
            r.collected_at.isoformat(),
            r.source_event_id.removeprefix(prefix),
            named[r.proof["inbox_id"]],  # the delivery that carried it
            r.received_at == arrival[r.proof["inbox_id"]],  # received when that delivery arrived
        )
        for r in records
    )
    people = {key for (kind, key) in label.names if kind == "p"}
    state = sorted(
        (label("p", row.profile_id), row.purpose, row.status, row.collected_at.isoformat())
        for row in session.scalars(select(ConsentState).where(ConsentState.profile_id.in_(people)))
    )
    merged = sorted(
        (label("p", p.id), label("p", p.merged_into_id))
        for p in session.scalars(select(Profile).where(Profile.id.in_(people)))
    )
    inbox = sorted(
        (named[item.id], ids_named(item.error or ""), item.processed_at == item.received_at) for item in items
    )
    return {"answers": summary, "ledger": ledger, "state": state, "merged": merged, "inbox": inbox}


class _OneByOne:
    def submit(self, _delivery: Delivery) -> None:
        return None


def test_a_batch_answers_and_stores_what_one_by_one_does(
    app: Flask, client: FlaskClient, db_session: Session, encryptor: FieldEncryptor, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_source(db_session, encryptor, "one", "generic", "hmac")
    make_source(db_session, encryptor, "batch", "generic", "hmac")
    db_session.commit()

    # One by one, in order, through the real endpoint.
    monkeypatch.setitem(app.extensions, "hub.cmp_batcher", _OneByOne())
    now = int(time.time())
    for source, prefix in (("one", "a-"), ("batch", "b-")):
        data = earlier(prefix)
        assert post(client, Delivery(source, data, signed(data, now), None, utcnow()))[0] == 200
    single = [post(client, delivery) for delivery in deliveries("one", "a-")]
    expected = snapshot(db_session, "one", "a-", single)

    # The same deliveries as one batch; what it leaves goes one by one afterwards, in order.
    batch = deliveries("batch", "b-")
    answers = run_batch(app, batch)
    left = [index for index, answer in enumerate(answers) if answer is None]
    # The malformed body, and the bad signature: refused by the source as the batcher keeps it, which the
    # one-by-one path confirms with the source read again.
    assert left == [8, 9]
    batched = [
        as_response(answer) if answer is not None else post(client, batch[i]) for i, answer in enumerate(answers)
    ]
    assert snapshot(db_session, "batch", "b-", batched) == expected

    # And what both did is what the scenario means.
    assert [a[0] for a in expected["answers"]] == [200, 200, 200, 200, 200, 200, 200, 200, 400, 401, 404, 200]
    assert [a[1] for a in expected["answers"] if a[0] == 200] == ["duplicate"] * 2 + ["processed"] * 4 + [
        "duplicate"
    ] * 2 + ["processed"]
    assert expected["answers"][0][4] == ("same body or event id as delivery e0/processed",)
    assert [a[3] for a in expected["answers"][2:6]] == ["p0", "p1", "p0", "p0"]  # ann is found by either id
    # The later denial wins over the out-of-order grant collected before it.
    assert ("p0", "ad_user_data", "denied", "2026-11-28T10:30:00+00:00") in expected["state"]
    assert [name for name, *_ in expected["inbox"]].count("e0/duplicate") == 2
    # Ledger rows point at their own delivery and were received when it arrived; inbox rows processed then.
    assert all(row[5].endswith("/processed") and row[6] for row in expected["ledger"])
    assert all(same for *_, same in expected["inbox"])
    assert verify_projection(db_session) == []


def test_a_decision_the_batch_cannot_take_goes_one_by_one_and_the_rest_stays_batched(
    app: Flask, client: FlaskClient, db_session: Session, encryptor: FieldEncryptor
) -> None:
    make_source(db_session, encryptor, "batch", "generic", "hmac")
    db_session.commit()
    good = body("", "g1", "2026-11-28T10:00:00Z", {"email": "ann@example.com"}, ad_user_data="granted")
    unknown = body("", "g2", "2026-11-28T10:00:00Z", {"email": "bob@example.com"}, newsletter="granted")
    also_good = body("", "g3", "2026-11-28T10:00:00Z", {"email": "cy@example.com"}, ad_storage="denied")
    now = int(time.time())
    batch = [Delivery("batch", data, signed(data, now), "127.0.0.1", utcnow()) for data in (good, unknown, also_good)]
    answers = run_batch(app, batch)
    assert answers[1] is None  # left to the one-by-one path
    assert [a.outcome.records for a in (answers[0], answers[2]) if a is not None and a.outcome is not None] == [1, 1]
    db_session.expire_all()
    # The attempt that met the unknown purpose left nothing behind: one inbox row per batched delivery.
    assert [item.status for item in db_session.scalars(select(CmpInboxItem))] == ["processed", "processed"]
    assert len(db_session.scalars(select(ConsentRecord)).all()) == 2
    assert post(client, batch[1])[0] == 400
    assert verify_projection(db_session) == []


def test_a_delivery_that_merges_profiles_goes_one_by_one(
    app: Flask, client: FlaskClient, db_session: Session, encryptor: FieldEncryptor
) -> None:
    make_source(db_session, encryptor, "batch", "generic", "hmac")
    db_session.commit()
    now = int(time.time())
    bodies = [
        body("", "m1", "2026-11-28T10:00:00Z", {"email": "ann@example.com", "external_id": "42"}, sale="denied"),
        body("", "m2", "2026-11-28T10:00:00Z", {"email": "bob@example.com"}, ad_user_data="granted"),
    ]
    for data in bodies:
        assert post(client, Delivery("batch", data, signed(data, now), None, utcnow()))[0] == 200
    link = body("", "m3", "2026-11-28T11:00:00Z", {"email": "bob@example.com", "external_id": "42"}, sale="granted")
    other = body("", "m4", "2026-11-28T11:00:00Z", {"email": "cy@example.com"}, ad_storage="granted")
    batch = [Delivery("batch", data, signed(data, now), None, utcnow()) for data in (other, link)]
    answers = run_batch(app, batch)
    assert answers[1] is None
    assert answers[0] is not None
    assert answers[0].outcome is not None
    assert answers[0].outcome.records == 1
    db_session.expire_all()
    assert db_session.scalars(select(Profile).where(Profile.merged_into_id.is_not(None))).all() == []
    status, answer = post(client, batch[1])
    assert (status, answer["records"]) == (200, 1)
    db_session.expire_all()
    assert len(db_session.scalars(select(Profile).where(Profile.merged_into_id.is_not(None))).all()) == 1
    assert verify_projection(db_session) == []


def signed(data: bytes, now: int) -> dict[str, str]:
    return {"X-Hub-Signature": sign_hmac(SECRET.encode(), data, now), "Content-Type": "application/json"}


def test_group_commit_batches_concurrent_submissions() -> None:
    running = 0
    most = 0
    sizes: list[int] = []
    guard = threading.Lock()

    def work(items: Sequence[int]) -> list[int]:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
            sizes.append(len(items))
        time.sleep(0.01)
        with guard:
            running -= 1
        return [item * 10 for item in items]

    commit: GroupCommit[int, int] = GroupCommit(work, max_batch=8, concurrency=2, stall_seconds=0.0)
    results: dict[int, int | None] = {}

    def submit(item: int) -> None:
        results[item] = commit.submit(item)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a submission was never answered"
    assert results == {n: n * 10 for n in range(60)}  # every item answered once, with its own result
    assert sum(sizes) == 60
    assert max(sizes) > 1, sizes  # submissions that arrived together were batched
    assert max(sizes) <= 8
    assert most <= 2


def test_a_stalled_batch_does_not_hold_up_the_deliveries_behind_it() -> None:
    release = threading.Event()
    started = threading.Event()

    def work(items: Sequence[int]) -> list[int]:
        if 0 in items:  # the first batch waits, as on a row locked by a long transaction
            started.set()
            release.wait(timeout=30)
        return [item * 10 for item in items]

    commit: GroupCommit[int, int] = GroupCommit(work, concurrency=2, stall_seconds=0.05)
    results: dict[int, int | None] = {}
    first = threading.Thread(target=lambda: results.update({0: commit.submit(0)}))
    first.start()
    assert started.wait(timeout=10)
    time.sleep(0.1)  # longer than stall_seconds
    later = [threading.Thread(target=lambda n=n: results.update({n: commit.submit(n)})) for n in range(1, 6)]
    for thread in later:
        thread.start()
    for thread in later:
        thread.join(timeout=10)
        assert not thread.is_alive(), "a delivery waited for the stalled batch"
    assert results == {n: n * 10 for n in range(1, 6)}
    release.set()
    first.join(timeout=10)
    assert results[0] == 0


def test_one_batch_at_a_time_while_batches_are_quick() -> None:
    running = 0
    most = 0
    guard = threading.Lock()

    def work(items: Sequence[int]) -> list[int]:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.005)
        with guard:
            running -= 1
        return list(items)

    commit: GroupCommit[int, int] = GroupCommit(work, concurrency=2, stall_seconds=10)
    threads = [threading.Thread(target=commit.submit, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert most == 1


def test_group_commit_answers_none_when_a_batch_fails() -> None:
    def work(items: Sequence[int]) -> list[int]:
        raise RuntimeError("database gone")

    commit: GroupCommit[int, int] = GroupCommit(work, concurrency=1)
    assert commit.submit(1) is None
    # The lead was released: the next submission runs (and fails) too instead of waiting forever.
    answered: list[int | None] = []
    thread = threading.Thread(target=lambda: answered.append(commit.submit(2)))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the failed batch kept the lead"
    assert answered == [None]


def test_batch_sizes_are_in_the_metrics(client: FlaskClient, db_session: Session, encryptor: FieldEncryptor) -> None:
    make_source(db_session, encryptor, "batch", "generic", "hmac")
    db_session.commit()
    data = body("", "x1", "2026-11-28T10:00:00Z", {"email": "ann@example.com"}, ad_user_data="granted")
    assert post(client, Delivery("batch", data, signed(data, int(time.time())), None, utcnow()))[0] == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'hub_cmp_webhook_batch_size_bucket{le="1.0"} 1.0' in metrics
    assert 'hub_cmp_webhooks_total{result="processed",source="batch"} 1.0' in metrics


def test_a_source_changed_after_it_was_read_takes_effect_with_the_next_delivery(
    app: Flask, client: FlaskClient, db_session: Session, encryptor: FieldEncryptor
) -> None:
    # The batcher prepares deliveries with each source as the process last read it; a change made since (here
    # from another session, as an admin or another process would) must still govern the next delivery.
    source = make_source(db_session, encryptor, "batch", "generic", "hmac")
    db_session.commit()
    now = int(time.time())
    first = body("", "c1", "2026-11-28T10:00:00Z", {"email": "ann@example.com"}, ad_user_data="granted")
    assert post(client, Delivery("batch", first, signed(first, now), None, utcnow()))[0] == 200
    assert "batch" in app.extensions["hub.cmp_batcher"].sources

    # A new purpose map: a delivery prepared with the old one (where ad_storage meant itself) is taken again and
    # mapped with the new one.
    update_source(
        db_session, encryptor, source.id, settings={"purpose_map": {"ad_storage": "ad_user_data"}}, now=utcnow()
    )
    db_session.commit()
    mapped = body("", "c2", "2026-11-28T11:00:00Z", {"email": "ann@example.com"}, ad_storage="denied")
    status, answer = post(client, Delivery("batch", mapped, signed(mapped, now), None, utcnow()))
    assert (status, answer["status"], answer["records"]) == (200, "processed", 1)
    db_session.expire_all()
    assert [r.purpose for r in db_session.scalars(select(ConsentRecord).where(ConsentRecord.status == "denied"))] == [
        "ad_user_data"
    ]

    # A rotated secret: the new one is accepted at once, the old one refused.
    update_source(db_session, encryptor, source.id, secret="a-new-secret-that-is-long-enough-0123", now=utcnow())
    db_session.commit()
    rotated = body("", "c3", "2026-11-28T12:00:00Z", {"email": "ann@example.com"}, ad_user_data="granted")
    new_signature = {"X-Hub-Signature": sign_hmac(b"a-new-secret-that-is-long-enough-0123", rotated, now)}
    assert post(client, Delivery("batch", rotated, new_signature, None, utcnow()))[0] == 200
    stale = body("", "c4", "2026-11-28T12:00:00Z", {"email": "ann@example.com"}, ad_user_data="granted")
    assert post(client, Delivery("batch", stale, signed(stale, now), None, utcnow()))[0] == 401

    # Disabled: refused, nothing stored.
    update_source(db_session, encryptor, source.id, enabled=False, now=utcnow())
    db_session.commit()
    late = body("", "c5", "2026-11-28T13:00:00Z", {"email": "ann@example.com"}, ad_user_data="denied")
    late_signature = {"X-Hub-Signature": sign_hmac(b"a-new-secret-that-is-long-enough-0123", late, now)}
    assert post(client, Delivery("batch", late, late_signature, None, utcnow()))[0] == 404
    db_session.expire_all()
    assert [item.event_key for item in db_session.scalars(select(CmpInboxItem).order_by(CmpInboxItem.id))] == [
        "c1",
        "c2",
        "c3",
    ]
    assert verify_projection(db_session) == []


def test_a_batch_keeps_each_raw_body_exactly(app: Flask, db_session: Session, encryptor: FieldEncryptor) -> None:
    make_source(db_session, encryptor, "batch", "generic", "hmac")
    db_session.commit()
    now = int(time.time())
    bodies = [
        # Escapes, non-ASCII text, a byte-order mark: the inbox keeps the bytes as sent, not the parsed JSON.
        b'{"id": "r1", "collected_at": "2026-11-28T10:00:00Z", "subject": {"email": "z\\u00fc@example.com"},'
        b' "region": "DE", "purposes": {"ad_user_data": "granted"}, "note": "a\\\\b \\"q\\" \\/"}',
        '\ufeff{"id": "r2", "collected_at": "2026-11-28T10:00:00Z", "subject": {"email": "jörg@example.com"},'
        ' "region": "DE", "purposes": {"ad_storage": "denied"}, "note": "日本 \\u0000 end"}'.encode(),
    ]
    batch = [
        Delivery("batch", data, {**signed(data, now), "User-Agent": "cmp/1.0"}, "10.0.0.7", utcnow()) for data in bodies
    ]
    answers = run_batch(app, batch)
    assert [a.result for a in answers if a is not None] == ["processed", "processed"]
    db_session.expire_all()
    items = db_session.scalars(select(CmpInboxItem).order_by(CmpInboxItem.id)).all()
    assert [inbox_body(encryptor, item) for item in items] == bodies
    assert [item.event_key for item in items] == ["r1", "r2"]
    assert all(item.headers.get("remote_addr") == "10.0.0.7" for item in items)
    assert [item.received_at for item in items] == [delivery.received_at for delivery in batch]


def test_a_batch_from_two_sources_finds_one_new_person_once(
    app: Flask, db_session: Session, encryptor: FieldEncryptor
) -> None:
    # Each source's people are resolved in turn, each seeing what the one before wrote: a person new to hub whom
    # both sources name in one batch is created once, and both decisions are recorded for them.
    make_source(db_session, encryptor, "first", "generic", "hmac")
    make_source(db_session, encryptor, "second", "generic", "hmac")
    db_session.commit()
    now = int(time.time())
    batch = []
    for source, minute in (("first", 10), ("second", 20)):
        data = body(f"{source}-", "e1", f"2026-11-28T10:{minute}:00Z", {"email": "zoe@example.com"}, sale="denied")
        data = data.replace(f"{source}-zoe".encode(), b"zoe")  # the same person from both sources
        batch.append(Delivery(source, data, signed(data, now), "127.0.0.1", utcnow()))
    answers = run_batch(app, batch)
    assert [answer.result if answer else None for answer in answers] == ["processed", "processed"]
    people = {answer.outcome.profile_id for answer in answers if answer and answer.outcome}
    assert len(people) == 1
    [person] = people
    records = db_session.scalars(select(ConsentRecord).where(ConsentRecord.profile_id == person)).all()
    assert sorted(r.source for r in records) == ["cmp:first", "cmp:second"]
    assert verify_projection(db_session) == []
