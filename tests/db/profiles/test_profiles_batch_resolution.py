"""resolve_many against the full one-call-at-a-time path: same answers, same rows, whatever a batch mixes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.encryption import FieldEncryptor
from hub.profiles import services
from hub.profiles.identifiers import identity_policy
from hub.profiles.models import Identity, Profile, ProfileMerge, SuppressedIdentifier
from hub.profiles.normalize import sha256_hex
from hub.profiles.services import (
    PreparedIdentity,
    Resolution,
    erase_profile,
    prepare_identity,
    resolve_identity,
    resolve_many,
    resolve_prepared,
)

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=2)  # past LAST_SEEN_RESOLUTION: returning identifiers get last_seen_at refreshed
SOON = T0 + timedelta(minutes=5)  # within it: nothing is refreshed
FBP_ANN = "fb.1.1764300000000.111"
FBP_BOB = "fb.1.1764300000000.222"
FBP_NEW = "fb.1.1764300000000.333"
FBP_UNKNOWN = "fb.1.1764300000000.444"

# Known before the batch: ann (email, external_id, fbp, traits, region), bob (email, phone, fbp), cid (external_id),
# and an erased person's suppressed email.
KNOWN: list[tuple[dict[str, object], str | None]] = [
    ({"email": "ann@shop.example", "external_id": "crm-ann", "fbp": FBP_ANN, "first_name": "Ann"}, "DE"),
    ({"email": "bob@shop.example", "phone": "+4915112345678", "fbp": FBP_BOB}, None),
    ({"external_id": "crm-cid", "email": "cid@shop.example"}, "FR"),
]

BATCH: list[tuple[dict[str, object], str | None]] = [
    ({"email": "ann@shop.example", "external_id": "crm-ann", "fbp": FBP_ANN}, "DE"),  # returning, nothing new
    ({"email": "ANN@shop.example"}, None),  # returning again in the same batch
    ({"fbp": FBP_BOB}, None),  # the browser's owner
    ({"fbp": FBP_UNKNOWN}, None),  # unknown browser alone: no profile
    ({"email": "gone@shop.example", "first_name": "Gone"}, None),  # suppressed
    ({"email": "new1@shop.example", "phone": "+4791234567", "first_name": "Nia", "country": "NO"}, None),  # new
    ({"email": "new2@shop.example", "fbp": FBP_NEW}, "US-CA"),  # new, its browser reused below
    ({"fbp": FBP_NEW}, None),  # follows the browser created earlier in this batch
    ({"email": "twice@shop.example"}, None),  # new, then seen again with more
    ({"email": "twice@shop.example", "external_id": "crm-twice"}, None),
    ({"email": "test@test.com", "external_id": "crm-blocked"}, None),  # blocked email noted, new person
    ({"email": "bob@shop.example", "fbp": FBP_ANN}, None),  # ann's browser stays hers
    ({"external_id": "crm-cid", "last_name": "Doe"}, None),  # returning with a new trait
    ({"external_id": "crm-cid"}, "US-TX"),  # returning with a new region
    ({"email": "cid@shop.example", "phone": "+4915199999999"}, None),  # returning with a new phone
    ({"email": "bob@shop.example", "external_id": "crm-bob"}, None),  # attaches an external_id to bob
    ({"email": "ann@shop.example", "phone": "+4915112345678"}, None),  # merges bob into ann
    ({"phone": "+4915112345678", "first_name": "Robert"}, None),  # bob's phone: now ann's cluster
    ({"external_id": "crm-ann", "email": "cid@shop.example"}, None),  # two external_ids: conflict
    ({"first_name": "Nobody"}, None),  # no identifier at all
    ({"email": "ann@shop.example", "external_id": "crm-ann", "fbp": FBP_ANN}, "DE"),  # ann after the merge
]


# Independent calls (no identifier or profile shared): each takes its own path within one batch.
INDEPENDENT = [BATCH[i] for i in (0, 2, 3, 4, 5, 10, 13, 14, 19)]


@pytest.fixture
def encryptor(settings: Settings) -> FieldEncryptor:
    return FieldEncryptor(settings.encryption_keys)


def seed(session: Session, encryptor: FieldEncryptor, settings: Settings) -> None:
    for user, region in KNOWN:
        resolve_identity(session, encryptor, user, region=region, source="seed", settings=settings, now=T0)
    session.add(
        SuppressedIdentifier(kind="email", value_hash=sha256_hex("gone@shop.example"), reason="erased", created_at=T0)
    )
    session.flush()


def prepared(settings: Settings, batch: list[tuple[dict[str, object], str | None]]) -> list[PreparedIdentity]:
    return [prepare_identity(user, region=region, settings=settings) for user, region in batch]


def full_path(
    session: Session, encryptor: FieldEncryptor, settings: Settings, item: PreparedIdentity, now: datetime
) -> Resolution:
    """The reference: every call through lookup, load and write in its own SAVEPOINT (no shortcut)."""
    policy = identity_policy(settings.extra)
    candidates, notes = services._usable_candidates(item, policy)
    base = Resolution(profile_id=None, normalized=item.normalized, errors=dict(item.errors))
    if not candidates:
        return services._with(base, notes=(*notes, services.NO_IDENTIFIER_NOTE))
    return services._resolve_with_retries(session, encryptor, item, candidates, notes, base, "batch", policy, now)


def state(session: Session, encryptor: FieldEncryptor, results: list[Resolution]) -> dict[str, Any]:
    """Results and rows with new profile ids replaced by the index of the first result naming them."""
    session.flush()
    session.expire_all()
    names: dict[str | None, str] = {}
    for index, result in enumerate(results):
        if result.profile_id is not None and result.profile_id not in names:
            names[result.profile_id] = f"result-{index}"
    seeded = {p for p in session.scalars(select(Profile.id).where(Profile.created_at == T0))}

    def name(profile_id: str | None) -> str | None:
        if profile_id is None or profile_id in seeded:
            return profile_id
        return names.get(profile_id, "unnamed")

    profiles = sorted(
        (
            name(p.id),
            name(p.merged_into_id),
            p.region,
            encryptor.decrypt_json(p.traits_encrypted) if p.traits_encrypted else None,
            # Setting updated_at to the value it already has is no change to the ORM, whose onupdate then
            # stamps the wall clock: the same in both paths, but not a value two runs can compare.
            p.updated_at if p.updated_at <= LATER else "wall clock",
        )
        for p in session.scalars(select(Profile))
    )
    identities = sorted(
        (i.kind, i.value_hash, name(i.profile_id), i.last_seen_at) for i in session.scalars(select(Identity))
    )
    merges = sorted((name(m.winner_id), name(m.loser_id), m.link_kind) for m in session.scalars(select(ProfileMerge)))
    answers = [
        (
            name(r.profile_id),
            r.created,
            tuple(name(m) for m in r.merged),
            r.attached,
            r.suppressed,
            r.notes,
            r.conflict,
            r.traits_changed,
            r.region,
            r.region_changed,
            dict(r.errors),
        )
        for r in results
    ]
    return {"answers": answers, "profiles": profiles, "identities": identities, "merges": merges}


@pytest.mark.parametrize("now", [SOON, LATER], ids=["within-last-seen-resolution", "past-it"])
@pytest.mark.parametrize(
    ("calls", "rotation"),
    [(BATCH, 0), (BATCH, 7), (BATCH, 13), (INDEPENDENT, 0), (INDEPENDENT, 4)],
    ids=["mixed", "mixed-rotated-7", "mixed-rotated-13", "independent", "independent-rotated-4"],
)
def test_resolve_many_equals_the_full_path_one_call_at_a_time(
    db_session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    now: datetime,
    calls: list[tuple[dict[str, object], str | None]],
    rotation: int,
) -> None:
    seed(db_session, encryptor, settings)
    batch = calls[rotation:] + calls[:rotation]
    items = prepared(settings, batch)

    with db_session.begin_nested() as reference_run:
        expected = state(db_session, encryptor, [full_path(db_session, encryptor, settings, i, now) for i in items])
        reference_run.rollback()
    with db_session.begin_nested():
        batched = resolve_many(db_session, encryptor, items, source="batch", settings=settings, now=now)
        actual = state(db_session, encryptor, batched)

    for key in ("answers", "profiles", "identities", "merges"):
        assert actual[key] == expected[key], key


@pytest.mark.parametrize("now", [SOON, LATER], ids=["within-last-seen-resolution", "past-it"])
def test_each_call_alone_equals_the_full_path(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, now: datetime
) -> None:
    """Alone, most calls take a shortcut (no write, or a new person without a SAVEPOINT) in ``resolve_many`` and
    in ``resolve_prepared``: each must still answer and write exactly what the full path does."""
    seed(db_session, encryptor, settings)
    for index, item in enumerate(prepared(settings, BATCH)):
        with db_session.begin_nested() as reference_run:
            expected = state(db_session, encryptor, [full_path(db_session, encryptor, settings, item, now)])
            reference_run.rollback()
        with db_session.begin_nested() as batch_run:
            batched = resolve_many(db_session, encryptor, [item], source="batch", settings=settings, now=now)
            assert state(db_session, encryptor, batched) == expected, (index, BATCH[index])
            batch_run.rollback()
        with db_session.begin_nested() as single_run:
            single = resolve_prepared(db_session, encryptor, item, source="batch", settings=settings, now=now)
            assert state(db_session, encryptor, [single]) == expected, (index, BATCH[index])
            single_run.rollback()


def test_returning_people_cost_one_query_and_no_write(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    seed(db_session, encryptor, settings)
    items = prepared(settings, [BATCH[0], BATCH[1], BATCH[2], BATCH[3], BATCH[4]])
    statements: list[str] = []
    from sqlalchemy import event

    connection = db_session.connection()

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    try:
        results = resolve_many(db_session, encryptor, items, source="batch", settings=settings, now=SOON)
    finally:
        event.remove(connection, "before_cursor_execute", record)
    assert [r.created for r in results] == [False] * 5
    assert [r.suppressed for r in results] == [False, False, False, False, True]
    assert len(statements) == 1, statements
    assert statements[0].lstrip().upper().startswith("SELECT")


def stale_first_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first lookup answers as if it ran before another request created the person."""
    real_lookup = services._lookup
    calls = {"n": 0}

    def lookup(session: Session, candidates: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            return services.Snapshot(held={}, suppressed=frozenset())
        return real_lookup(session, candidates)

    monkeypatch.setattr(services, "_lookup", lookup)


def test_a_new_person_created_concurrently_is_not_created_twice(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ON CONFLICT insert skips the taken identity, the half-created profile is removed again and the call
    attaches to the existing one; the other new person of the batch is created as usual."""
    other = resolve_identity(
        db_session, encryptor, {"email": "race@shop.example"}, region=None, source="other", settings=settings, now=T0
    )
    stale_first_lookup(monkeypatch)
    users = [{"email": "race@shop.example", "phone": "+4915100000001"}, {"email": "calm@shop.example"}]
    results = resolve_many(
        db_session,
        encryptor,
        [prepare_identity(u, region=None, settings=settings) for u in users],
        source="batch",
        settings=settings,
        now=T0,
    )
    assert results[0].profile_id == other.profile_id
    assert (results[0].created, results[0].attached) == (False, ("phone",))
    assert results[1].created is True
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 2
    phone_holder = db_session.scalar(select(Identity.profile_id).where(Identity.kind == "phone"))
    assert phone_holder == other.profile_id


def test_single_call_for_a_concurrently_created_person(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = resolve_identity(
        db_session, encryptor, {"email": "race@shop.example"}, region=None, source="other", settings=settings, now=T0
    )
    stale_first_lookup(monkeypatch)
    result = resolve_prepared(
        db_session,
        encryptor,
        prepare_identity({"email": "race@shop.example"}, region=None, settings=settings),
        source="api",
        settings=settings,
        now=SOON,
    )
    assert (result.profile_id, result.created) == (other.profile_id, False)
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 1
    assert db_session.scalar(select(func.count()).select_from(Identity)) == 1


def test_single_calls_cost_one_round_trip_on_postgresql(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    """A new person is looked up and created by one statement on PostgreSQL (the lookup, then the profile and its
    identities on SQLite, where a statement costs no round trip); a returning person with nothing new is one
    lookup on both; a new person whose identifier was erased creates nothing."""
    from sqlalchemy import event

    connection = db_session.connection()
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    def resolve(user: dict[str, object]) -> Resolution:
        statements.clear()
        return resolve_prepared(
            db_session,
            encryptor,
            prepare_identity(user, region=None, settings=settings),
            source="api",
            settings=settings,
            now=T0,
        )

    ann = {"email": "ann@shop.example", "phone": "+4915100000001", "first_name": "Ann", "country": "DE"}
    postgresql = db_session.get_bind().dialect.name == "postgresql"
    event.listen(connection, "before_cursor_execute", record)
    try:
        created = resolve(ann)
        assert len(statements) == (1 if postgresql else 3), statements
        again = resolve(ann)
        assert len(statements) == 1, statements
        erase_profile(db_session, created.profile_id or "", "request", now=T0)
        suppressed = resolve({"email": "ann@shop.example", "external_id": "crm-1"})
    finally:
        event.remove(connection, "before_cursor_execute", record)
    assert (created.created, sorted(created.attached), created.region) == (True, ["email", "phone"], "DE")
    assert (again.profile_id, again.created, again.changed) == (created.profile_id, False, False)
    assert (suppressed.profile_id, suppressed.suppressed, suppressed.created) == (None, True, False)
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 1
    stored = db_session.scalar(select(Profile.traits_encrypted).where(Profile.id == created.profile_id))
    assert stored is None  # erased


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_single_call_lookup_probes_the_unique_indexes(db_session: Session, mode: str) -> None:
    """PostgreSQL: the one-call lookup (which creates a new person) keeps index probes on an unanalyzed database,
    under the connection's cached generic plan as much as under a custom one."""
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("plans and plan caching are PostgreSQL's")
    from sqlalchemy import insert

    rows = 3000
    db_session.execute(
        insert(Profile.__table__), [{"id": f"p{n:031d}", "created_at": T0, "updated_at": T0} for n in range(rows)]
    )
    db_session.execute(
        insert(Identity.__table__),
        [
            {"profile_id": f"p{n:031d}", "kind": "email", "value_hash": f"{n:064x}", "created_at": T0}
            | {"last_seen_at": T0}
            for n in range(rows)
        ],
    )
    connection = db_session.connection()
    sql = services._postgresql_lookup_or_create_sql(connection.dialect)
    params = {
        "keys": services.json_document([{"kind": "email", "value_hash": f"{7:064x}"}]),
        "profile_id": "q" * 32,
        "traits_encrypted": None,
        "region": None,
        "identities": services.json_document([{"kind": "email", "value_hash": f"{7:064x}", "value_encrypted": None}]),
        "now": T0,
    }
    connection.exec_driver_sql(f"SET LOCAL plan_cache_mode = {mode}")
    text = "\n".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {sql}", params))
    for table in ("identities", "profiles", "suppressed_identifiers"):
        assert f"Seq Scan on {table}" not in text, text
    assert "uq_identities_kind_value_hash" in text, text


@pytest.mark.parametrize("now", [SOON, LATER], ids=["within-last-seen-resolution", "past-it"])
def test_a_look_up_sent_ahead_resolves_as_resolve_many_s_own(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, now: datetime
) -> None:
    """``lookup_ahead`` (PostgreSQL: sent with a CMP batch's first statement) answers what ``resolve_many`` would
    have read itself: the same resolutions and rows, and one look-up fewer (the groups resolved item by item
    still read their own)."""
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("the look-up sent ahead is PostgreSQL's (hub.db.pipelined)")
    from sqlalchemy import event

    from hub.db import pipelined

    seed(db_session, encryptor, settings)
    items = prepared(settings, BATCH)
    connection = db_session.connection()
    lookup_text = str(services._postgresql_lookup_statement().compile(dialect=connection.dialect))
    assert lookup_text.split()[:4] == ["SELECT", "%(param_1)s::VARCHAR", "AS", "source,"]  # as the driver gets it
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    def resolve(looked_up: services.Snapshot | None) -> tuple[dict[str, Any], int]:
        statements.clear()
        event.listen(connection, "before_cursor_execute", record)
        try:
            results = resolve_many(
                db_session, encryptor, items, source="batch", settings=settings, now=now, looked_up=looked_up
            )
        finally:
            event.remove(connection, "before_cursor_execute", record)
        return state(db_session, encryptor, results), statements.count(lookup_text)

    with db_session.begin_nested() as reference_run:
        expected, own_lookups = resolve(None)
        reference_run.rollback()
    lookup = services.lookup_ahead(items, settings=settings)
    actual, lookups = resolve(lookup.read(pipelined(db_session, list(lookup.calls))))
    assert actual == expected
    assert lookups == own_lookups - 1


def test_a_look_up_that_misses_identifiers_is_not_used(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    """A ``looked_up`` made for other identifiers (a batch changed since) cannot say who is new: resolution
    reads for itself."""
    seed(db_session, encryptor, settings)
    items = prepared(settings, [BATCH[0], BATCH[2]])  # ann and bob, both known
    nothing = services.Snapshot(held={}, suppressed=frozenset(), keys=frozenset({("email", "elsewhere")}))
    results = resolve_many(db_session, encryptor, items, source="batch", settings=settings, now=SOON, looked_up=nothing)
    assert [r.created for r in results] == [False, False]
    assert all(r.profile_id is not None for r in results)


def test_new_people_left_to_the_caller_resolve_as_complete_many(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    """``resolve_many_deferring_new_people`` (PostgreSQL: a CMP batch sends the statement with its consent lock)
    gives what ``complete_many`` gives once its statement has run; a plan that writes anything else is left to
    ``complete_many``."""
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("the new people's statement is sent by the caller on PostgreSQL (hub.db.pipelined)")
    from hub.db import pipelined

    seed(db_session, encryptor, settings)
    mixed = services.plan_many(db_session, encryptor, prepared(settings, BATCH), settings=settings, now=SOON)
    assert services.resolve_many_deferring_new_people(encryptor, mixed, settings=settings, now=SOON) is None

    newcomers = [BATCH[3], BATCH[5], BATCH[6]]  # an unknown browser alone, and two new people
    items = prepared(settings, newcomers)
    plan = services.plan_many(db_session, encryptor, items, settings=settings, now=SOON)
    with db_session.begin_nested() as reference_run:
        own = services.complete_many(db_session, encryptor, plan, source="batch", settings=settings, now=SOON)
        expected = state(db_session, encryptor, own)
        reference_run.rollback()
    deferring = services.resolve_many_deferring_new_people(encryptor, plan, settings=settings, now=SOON)
    assert deferring is not None
    resolutions, people = deferring
    [rows] = pipelined(db_session, [people.call])
    assert people.lost(rows) == set()
    assert state(db_session, encryptor, resolutions) == expected  # new profile ids named by result
