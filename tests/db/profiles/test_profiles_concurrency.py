"""Two identify calls racing for the same new person create one profile (real commits, separate connections)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from hub.config import Settings
from hub.db import make_sessionmaker
from hub.encryption import FieldEncryptor
from hub.profiles.models import Identity, Profile, ProfileMerge
from hub.profiles.services import Resolution, resolve_identity
from tests.support.databases import TestDatabase

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _race(fresh_database: TestDatabase, settings: Settings, users: list[dict[str, object]]) -> list[Resolution]:
    encryptor = FieldEncryptor(settings.encryption_keys)
    factory = make_sessionmaker(fresh_database.engine)
    barrier = threading.Barrier(len(users))
    results: list[Resolution | BaseException] = [RuntimeError("not run")] * len(users)

    def run(index: int) -> None:
        try:
            with factory() as session:
                barrier.wait(timeout=10)
                results[index] = resolve_identity(
                    session, encryptor, users[index], region=None, source="race", settings=settings, now=T0
                )
                session.commit()
        except BaseException as error:  # reported by the main thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(users))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, Resolution)]


def test_simultaneous_identify_of_one_new_email_creates_one_profile(
    fresh_database: TestDatabase, settings: Settings
) -> None:
    for round_ in range(5):
        email = f"race{round_}@shop.example"
        results = _race(fresh_database, settings, [{"email": email}, {"email": email.upper()}, {"email": email}])
        assert len({r.profile_id for r in results}) == 1
        assert sum(r.created for r in results) == 1
    with make_sessionmaker(fresh_database.engine)() as session:
        assert session.scalar(select(func.count()).select_from(Profile)) == 5
        assert session.scalar(select(func.count()).select_from(Identity)) == 5


def test_simultaneous_calls_sharing_one_new_identifier_end_in_one_cluster(
    fresh_database: TestDatabase, settings: Settings
) -> None:
    results = _race(
        fresh_database,
        settings,
        [
            {"email": "shared@shop.example", "phone": "+4791234567"},
            {"email": "shared@shop.example", "external_id": "crm-1"},
        ],
    )
    with make_sessionmaker(fresh_database.engine)() as session:
        roots = session.scalars(select(Profile).where(Profile.merged_into_id.is_(None))).all()
        assert len(roots) == 1
        assert {r.profile_id for r in results} == {roots[0].id}
        kinds = session.scalars(select(Identity.kind).where(Identity.profile_id == roots[0].id)).all()
        assert sorted(kinds) == ["email", "external_id", "phone"]
        assert session.scalar(select(func.count()).select_from(ProfileMerge)) == 0


def test_new_person_losing_a_race_inside_the_lookup_attaches_to_the_winner(
    fresh_database: TestDatabase, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The other transaction holds the email uncommitted while this call looks it up: the lookup does not see it,
    the call's own INSERT waits for it and skips it; the half-created profile is removed and the call resolves
    again to the winner's profile, attaching its phone there."""
    if fresh_database.backend != "postgresql":
        pytest.skip("SQLite serializes writers: the second call starts after the first has committed")
    encryptor = FieldEncryptor(settings.encryption_keys)
    factory = make_sessionmaker(fresh_database.engine)
    user = {"email": "race@shop.example", "phone": "+4915100000001"}
    results: list[Resolution | BaseException] = []
    with factory() as winner_session:
        winner = resolve_identity(
            winner_session, encryptor, {"email": user["email"]}, region=None, source="race", settings=settings, now=T0
        )

        def loser() -> None:
            try:
                with factory() as session:
                    result = resolve_identity(
                        session, encryptor, user, region=None, source="race", settings=settings, now=T0
                    )
                    results.append(result)
                    session.commit()
            except BaseException as error:  # reported by the main thread
                results.append(error)

        caplog.set_level(logging.DEBUG, logger="hub.profiles.services")
        thread = threading.Thread(target=loser)
        thread.start()
        thread.join(timeout=0.5)  # the loser is now waiting on the winner's uncommitted email
        assert thread.is_alive()
        winner_session.commit()
        thread.join(timeout=30)
    [result] = results
    if isinstance(result, BaseException):
        raise result
    assert (result.profile_id, result.created, result.attached) == (winner.profile_id, False, ("phone",))
    assert "lost a race" in caplog.text
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Profile)) == 1
        holders = {row.kind: row.profile_id for row in session.execute(select(Identity.kind, Identity.profile_id))}
        assert holders == {"email": winner.profile_id, "phone": winner.profile_id}
