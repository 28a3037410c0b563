"""Identity resolution on a migrated database: attach, merge chains, guards, weak identifiers, canonicalization."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.encryption import FieldEncryptor
from hub.profiles.models import Identity, Profile, ProfileMerge
from hub.profiles.normalize import sha256_hex
from hub.profiles.services import (
    IdentityConflict,
    ProfileNotFound,
    Resolution,
    attach_identity,
    canonical_profile_id,
    cluster_ids,
    find_profile_by_identity,
    lookup_profile,
    raise_for_conflict,
    resolve_identity,
)

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FBP = "fb.1.1764300000000.123456789"
FBP2 = "fb.1.1764300000000.987654321"
FBC = "fb.1.1764300000000.AbCdEf"


@pytest.fixture
def encryptor(settings: Settings) -> FieldEncryptor:
    return FieldEncryptor(settings.encryption_keys)


def identify(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    user: dict[str, object],
    *,
    minutes: int = 0,
    region: str | None = None,
    source: str = "test",
) -> Resolution:
    return resolve_identity(
        session,
        encryptor,
        user,
        region=region,
        source=source,
        settings=settings,
        now=T0 + timedelta(minutes=minutes),
    )


def identities_of(session: Session, profile_id: str) -> set[tuple[str, str]]:
    return {
        (kind, value_hash)
        for kind, value_hash in session.execute(
            select(Identity.kind, Identity.value_hash).where(Identity.profile_id == profile_id)
        )
    }


def test_new_email_creates_profile_with_encrypted_identity_and_traits(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    result = identify(
        db_session,
        encryptor,
        settings,
        {"email": " Ann@Example.com ", "first_name": "Ann", "city": "San Francisco", "country": "US"},
    )
    assert result.created
    assert result.profile_id
    assert result.attached == ("email",)
    assert result.merged == ()
    assert not result.suppressed
    assert result.conflict is None
    identity = db_session.scalars(select(Identity).where(Identity.profile_id == result.profile_id)).one()
    assert identity.value_hash == sha256_hex("ann@example.com")
    assert "ann@example.com" not in (identity.value_encrypted or "")
    assert encryptor.decrypt(identity.value_encrypted or "") == "ann@example.com"
    profile = db_session.get(Profile, result.profile_id)
    assert profile is not None
    assert profile.traits_encrypted
    # A Fernet token is URL-safe base64: a short word like "ann" turns up in one now and then by chance, JSON's
    # punctuation never does.
    assert '"fn"' not in profile.traits_encrypted
    assert encryptor.decrypt_json(profile.traits_encrypted) == {"fn": "ann", "ct": "sanfrancisco", "country": "us"}
    assert profile.region == "US"


def test_same_email_again_attaches_and_changes_nothing(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    first = identify(db_session, encryptor, settings, {"email": "ann@example.com"})
    again = identify(db_session, encryptor, settings, {"email": "ANN@example.com"}, minutes=1)
    assert again.profile_id == first.profile_id
    assert not again.created
    assert not again.changed
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 1


def test_new_identifier_attaches_to_matched_profile(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    first = identify(db_session, encryptor, settings, {"email": "ann@example.com"})
    second = identify(db_session, encryptor, settings, {"email": "ann@example.com", "phone": "+1 650 555 1212"})
    assert second.profile_id == first.profile_id
    assert second.attached == ("phone",)
    assert ("phone", sha256_hex("16505551212")) in identities_of(db_session, first.profile_id or "")


def test_merge_chain_by_email_then_phone_gives_one_profile_and_explains_both_steps(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    a = identify(db_session, encryptor, settings, {"email": "a@shop.example", "first_name": "Ann"})
    b = identify(db_session, encryptor, settings, {"phone": "+1 650 555 1212"}, minutes=1)
    c = identify(db_session, encryptor, settings, {"external_id": "crm-7", "last_name": "Lee"}, minutes=2)
    assert len({a.profile_id, b.profile_id, c.profile_id}) == 3

    # A-B linked by the email (B's phone arrives with A's email): A is older, A wins.
    ab = identify(db_session, encryptor, settings, {"email": "a@shop.example", "phone": "+1 650 555 1212"}, minutes=3)
    assert ab.profile_id == a.profile_id
    assert ab.merged == (b.profile_id,)
    # B-C linked by the phone: B is already A, so C joins A's cluster.
    bc = identify(
        db_session, encryptor, settings, {"phone": "+16505551212", "external_id": "crm-7"}, minutes=4, source="events"
    )
    assert bc.profile_id == a.profile_id
    assert bc.merged == (c.profile_id,)

    root = a.profile_id or ""
    assert cluster_ids(db_session, root) == [root, b.profile_id, c.profile_id]
    for pid in (a.profile_id, b.profile_id, c.profile_id):
        assert canonical_profile_id(db_session, pid or "") == root
    assert {k for k, _ in identities_of(db_session, root)} == {"email", "phone", "external_id"}

    merges = db_session.scalars(select(ProfileMerge).order_by(ProfileMerge.id)).all()
    assert [(m.winner_id, m.loser_id, m.link_kind, m.source) for m in merges] == [
        (root, b.profile_id, "phone", "test"),
        (root, c.profile_id, "external_id", "events"),
    ]
    assert merges[0].link_hash == sha256_hex("16505551212")
    assert merges[1].link_hash == sha256_hex("crm-7")
    moved = db_session.scalars(select(Identity.id).where(Identity.kind == "external_id")).all()
    assert merges[1].details["moved_identity_ids"] == moved
    # Traits combined, the loser's own copy kept only (encrypted) in the journal.
    root_profile = db_session.get(Profile, root)
    assert root_profile is not None
    assert encryptor.decrypt_json(root_profile.traits_encrypted or "") == {"fn": "ann", "ln": "lee"}
    loser_c = db_session.get(Profile, c.profile_id)
    assert loser_c is not None
    assert loser_c.traits_encrypted is None
    assert loser_c.merged_into_id == root
    assert encryptor.decrypt_json(merges[1].details["loser_traits_encrypted"]) == {"ln": "lee"}


def test_merging_a_root_flattens_its_cluster(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    old = identify(db_session, encryptor, settings, {"email": "old@shop.example"})
    mid = identify(db_session, encryptor, settings, {"email": "mid@shop.example"}, minutes=1)
    young = identify(db_session, encryptor, settings, {"email": "young@shop.example"}, minutes=2)
    # young absorbs nothing; mid absorbs young, then old absorbs mid: young must point at old directly.
    identify(db_session, encryptor, settings, {"email": "mid@shop.example", "phone": "+4930901820"}, minutes=3)
    merged = identify(
        db_session, encryptor, settings, {"email": "young@shop.example", "phone": "+4930901820"}, minutes=4
    )
    assert merged.profile_id == mid.profile_id
    assert merged.merged == (young.profile_id,)
    final = identify(db_session, encryptor, settings, {"email": "old@shop.example", "phone": "+4930901820"}, minutes=5)
    assert final.profile_id == old.profile_id
    assert final.merged == (mid.profile_id,)
    young_row = db_session.get(Profile, young.profile_id)
    assert young_row is not None
    assert young_row.merged_into_id == old.profile_id
    merge = db_session.scalars(select(ProfileMerge).where(ProfileMerge.loser_id == mid.profile_id)).one()
    assert merge.details["repointed_profile_ids"] == [young.profile_id]
    assert sorted(cluster_ids(db_session, old.profile_id or "")[1:]) == sorted([mid.profile_id, young.profile_id])


def test_newest_non_empty_trait_wins_on_merge(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    a = identify(db_session, encryptor, settings, {"email": "a@shop.example", "first_name": "Ann", "city": "Oslo"})
    identify(db_session, encryptor, settings, {"phone": "+4791234567", "first_name": "Anne"}, minutes=1)
    result = identify(
        db_session, encryptor, settings, {"email": "a@shop.example", "phone": "+4791234567", "gender": "F"}, minutes=2
    )
    profile = db_session.get(Profile, result.profile_id)
    assert result.profile_id == a.profile_id
    assert profile is not None
    assert encryptor.decrypt_json(profile.traits_encrypted or "") == {"fn": "anne", "ct": "oslo", "ge": "f"}


def test_two_external_ids_never_merge(db_session: Session, encryptor: FieldEncryptor, settings: Settings) -> None:
    one = identify(db_session, encryptor, settings, {"external_id": "crm-1", "email": "one@shop.example"})
    two = identify(db_session, encryptor, settings, {"external_id": "crm-2", "phone": "+4791234567"}, minutes=1)
    result = identify(db_session, encryptor, settings, {"email": "one@shop.example", "phone": "+4791234567"}, minutes=2)
    assert result.conflict is not None
    assert result.conflict_field == "user.external_id"
    assert result.merged == ()
    assert result.profile_id is None
    assert db_session.scalar(select(func.count()).select_from(ProfileMerge)) == 0
    assert canonical_profile_id(db_session, two.profile_id or "") == two.profile_id
    assert identities_of(db_session, one.profile_id or "") == {
        ("external_id", sha256_hex("crm-1")),
        ("email", sha256_hex("one@shop.example")),
    }
    with pytest.raises(IdentityConflict) as caught:
        raise_for_conflict(result)
    assert caught.value.field == "user.external_id"


def test_call_external_id_conflicting_with_two_profiles_resolves_to_its_holder(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    one = identify(db_session, encryptor, settings, {"external_id": "crm-1"})
    identify(db_session, encryptor, settings, {"external_id": "crm-2", "email": "two@shop.example"}, minutes=1)
    result = identify(db_session, encryptor, settings, {"external_id": "crm-1", "email": "two@shop.example"}, minutes=2)
    assert result.conflict is not None
    assert result.profile_id == one.profile_id
    assert not result.attached


def test_external_id_limit_on_single_profile_is_reported(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    one = identify(db_session, encryptor, settings, {"external_id": "crm-1", "email": "one@shop.example"})
    result = identify(db_session, encryptor, settings, {"external_id": "crm-9", "email": "one@shop.example"}, minutes=1)
    assert result.profile_id == one.profile_id
    assert result.attached == ()
    assert any(n.startswith("user.external_id: not attached") for n in result.notes)
    assert find_profile_by_identity(db_session, "external_id", sha256_hex("crm-9")) is None


def test_email_limit_reports_the_sixth(db_session: Session, encryptor: FieldEncryptor, settings: Settings) -> None:
    first = identify(db_session, encryptor, settings, {"external_id": "crm-1"})
    for n in range(5):
        r = identify(db_session, encryptor, settings, {"external_id": "crm-1", "email": f"ann{n}@shop.example"})
        assert r.attached == ("email",)
    sixth = identify(db_session, encryptor, settings, {"external_id": "crm-1", "email": "ann5@shop.example"})
    assert sixth.profile_id == first.profile_id
    assert sixth.attached == ()
    assert sixth.notes == ("user.email: not attached: the profile already holds 5 email identifier(s), the limit",)
    assert find_profile_by_identity(db_session, "email", sha256_hex("ann5@shop.example")) is None


def test_limits_configurable_through_settings(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    custom = settings.with_overrides(extra={"identity_limits": {"phone": 1}})
    identify(db_session, encryptor, custom, {"email": "a@shop.example", "phone": "+4791234567"})
    second = identify(db_session, encryptor, custom, {"email": "a@shop.example", "phone": "+4791234568"})
    assert second.attached == ()
    assert second.notes[0].startswith("user.phone: not attached")


@pytest.mark.parametrize(
    ("user", "field"),
    [
        ({"email": "test@test.com"}, "user.email"),
        ({"phone": "0000000000", "country": "US"}, "user.phone"),
        ({"external_id": "undefined"}, "user.external_id"),
        ({"email": sha256_hex("test@test.com")}, "user.email"),
    ],
)
def test_blocklisted_values_are_ignored_with_a_reason(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, user: dict[str, object], field: str
) -> None:
    result = identify(db_session, encryptor, settings, user)
    assert result.profile_id is None
    assert not result.created
    assert result.notes[0].startswith(f"{field}: ignored:")
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 0


def test_blocklisted_value_does_not_link_two_people(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    ann = identify(db_session, encryptor, settings, {"email": "ann@shop.example", "phone": "+1 650 555 1212"})
    bob = identify(db_session, encryptor, settings, {"email": "bob@shop.example", "phone": "+1 650 555 1212"})
    assert bob.profile_id == ann.profile_id  # a real shared phone links them ...
    custom = settings.with_overrides(extra={"identity_blocklist": {"email": ["shared@shop.example"]}})
    cat = identify(db_session, encryptor, custom, {"email": "shared@shop.example", "external_id": "crm-cat"})
    dog = identify(db_session, encryptor, custom, {"email": "shared@shop.example", "external_id": "crm-dog"})
    assert cat.profile_id != dog.profile_id  # ... a blocklisted one does not
    assert cat.notes == ("user.email: ignored: on the blocklist of placeholder values",)


def test_fbp_alone_neither_creates_nor_merges(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    lonely = identify(db_session, encryptor, settings, {"fbp": FBP})
    assert lonely.profile_id is None
    assert not lonely.created
    assert db_session.scalar(select(func.count()).select_from(Profile)) == 0

    ann = identify(db_session, encryptor, settings, {"email": "ann@shop.example", "fbp": FBP})
    assert ann.attached == ("email", "fbp")
    # Only the fbp: follows the browser to Ann.
    again = identify(db_session, encryptor, settings, {"fbp": FBP, "fbc": FBC})
    assert again.profile_id == ann.profile_id
    assert again.attached == ("fbc",)
    # Bob on Ann's browser: a new profile for Bob; the fbp stays with Ann and nothing merges.
    bob = identify(db_session, encryptor, settings, {"email": "bob@shop.example", "fbp": FBP})
    assert bob.created
    assert bob.profile_id != ann.profile_id
    assert bob.merged == ()
    assert "user.fbp: held by another profile" in bob.notes[0]
    assert find_profile_by_identity(db_session, "fbp", sha256_hex(FBP)) == ann.profile_id


def test_weak_identifiers_never_merge_two_strong_profiles(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    ann = identify(db_session, encryptor, settings, {"email": "ann@shop.example", "fbp": FBP})
    bob = identify(db_session, encryptor, settings, {"email": "bob@shop.example", "fbp": FBP2})
    result = identify(db_session, encryptor, settings, {"fbp": FBP2, "email": "ann@shop.example"})
    assert result.profile_id == ann.profile_id
    assert result.merged == ()
    assert canonical_profile_id(db_session, bob.profile_id or "") == bob.profile_id


@pytest.mark.parametrize(
    ("region", "country", "expected"),
    [
        ("us-ca", None, "US-CA"),
        (None, "Germany", "DE"),
        ("FR", "Germany", "FR"),
    ],
)
def test_region_from_context_else_country(
    db_session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    region: str | None,
    country: str | None,
    expected: str,
) -> None:
    user: dict[str, object] = {"email": "ann@shop.example"}
    if country:
        user["country"] = country
    result = identify(db_session, encryptor, settings, user, region=region)
    assert result.region == expected


def test_country_does_not_coarsen_a_subdivision_but_newer_context_wins(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    identify(db_session, encryptor, settings, {"email": "ann@shop.example"}, region="US-CA")
    same = identify(db_session, encryptor, settings, {"email": "ann@shop.example", "country": "US"})
    assert same.region == "US-CA"
    moved = identify(db_session, encryptor, settings, {"email": "ann@shop.example", "country": "DE"})
    assert moved.region == "DE"
    context = identify(db_session, encryptor, settings, {"email": "ann@shop.example"}, region="US-NY")
    assert context.region == "US-NY"


def test_invalid_region_is_an_error_and_unused(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    result = identify(db_session, encryptor, settings, {"email": "ann@shop.example"}, region="EEA")
    assert "context.region" in result.errors
    assert result.region is None


@pytest.mark.parametrize(
    ("user", "region", "default", "expected"),
    [
        ({"phone": "030 901820", "country": "DE"}, None, None, "4930901820"),
        ({"phone": "030 901820"}, "DE-BE", None, "4930901820"),
        ({"phone": "(650) 555-1212"}, None, "US", "16505551212"),
    ],
)
def test_phone_region_fallbacks(
    db_session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    user: dict[str, object],
    region: str | None,
    default: str | None,
    expected: str,
) -> None:
    result = identify(db_session, encryptor, settings.with_overrides(default_phone_region=default), user, region=region)
    assert result.profile_id is not None, result.errors
    assert find_profile_by_identity(db_session, "phone", sha256_hex(expected)) == result.profile_id


def test_national_phone_without_any_country_is_an_error(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    result = identify(db_session, encryptor, settings, {"phone": "030 901820"})
    assert result.profile_id is None
    assert "user.phone" in result.errors


def test_pre_hashed_email_is_matched_but_not_stored_in_clear(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    plain = identify(db_session, encryptor, settings, {"email": "ann@shop.example"})
    hashed = identify(db_session, encryptor, settings, {"email": sha256_hex("ann@shop.example").upper()})
    assert hashed.profile_id == plain.profile_id
    other = identify(db_session, encryptor, settings, {"email": sha256_hex("zed@shop.example")})
    identity = db_session.scalars(select(Identity).where(Identity.profile_id == other.profile_id)).one()
    assert identity.value_encrypted is None


def test_last_seen_refreshed_at_most_hourly(db_session: Session, encryptor: FieldEncryptor, settings: Settings) -> None:
    identify(db_session, encryptor, settings, {"email": "ann@shop.example"})
    identify(db_session, encryptor, settings, {"email": "ann@shop.example"}, minutes=30)
    identity = db_session.scalars(select(Identity)).one()
    db_session.refresh(identity)
    assert identity.last_seen_at == T0
    identify(db_session, encryptor, settings, {"email": "ann@shop.example"}, minutes=90)
    db_session.refresh(identity)
    assert identity.last_seen_at == T0 + timedelta(minutes=90)


def test_lookup_normalizes_like_identify(db_session: Session, encryptor: FieldEncryptor, settings: Settings) -> None:
    ann = identify(db_session, encryptor, settings, {"email": "ann@shop.example", "phone": "+1 650 555 1212"})
    assert lookup_profile(db_session, "email", " ANN@shop.example", settings=settings) == ann.profile_id
    assert lookup_profile(db_session, "phone", "(650) 555-1212", settings=settings, region="US") == ann.profile_id
    assert lookup_profile(db_session, "external_id", "nobody", settings=settings) is None


def test_canonical_profile_id_of_unknown_id(db_session: Session) -> None:
    with pytest.raises(ProfileNotFound):
        canonical_profile_id(db_session, "0" * 32)


def test_attach_identity_for_cmp_ids(db_session: Session, encryptor: FieldEncryptor, settings: Settings) -> None:
    ann = identify(db_session, encryptor, settings, {"email": "ann@shop.example"})
    bob = identify(db_session, encryptor, settings, {"email": "bob@shop.example"})
    didomi = sha256_hex("didomi-user-1")
    first = attach_identity(db_session, encryptor, ann.profile_id or "", "cmp:didomi", didomi, "didomi-user-1", now=T0)
    assert first.status == "attached"
    assert first.identity_id is not None
    again = attach_identity(db_session, encryptor, ann.profile_id or "", "cmp:didomi", didomi, None, now=T0)
    assert again.status == "already_attached"
    assert again.identity_id == first.identity_id
    other = attach_identity(db_session, encryptor, bob.profile_id or "", "cmp:didomi", didomi, None, now=T0)
    assert other.status == "held_by_other"
    assert other.other_profile_id == ann.profile_id
    assert find_profile_by_identity(db_session, "cmp:didomi", didomi) == ann.profile_id


def test_attach_identity_respects_limits(db_session: Session, encryptor: FieldEncryptor, settings: Settings) -> None:
    from hub.profiles.identifiers import identity_policy

    ann = identify(db_session, encryptor, settings, {"email": "ann@shop.example"})
    policy = identity_policy({"identity_limits": {"cmp:didomi": 1}})
    pid = ann.profile_id or ""
    ok = attach_identity(db_session, encryptor, pid, "cmp:didomi", sha256_hex("u1"), None, now=T0, policy=policy)
    over = attach_identity(db_session, encryptor, pid, "cmp:didomi", sha256_hex("u2"), None, now=T0, policy=policy)
    assert (ok.status, over.status) == ("attached", "over_limit")


def test_resolve_many_matches_one_at_a_time(db_session: Session, encryptor: FieldEncryptor, settings: Settings) -> None:
    from hub.profiles.services import prepare_identity, resolve_many

    known = identify(db_session, encryptor, settings, {"email": "known@shop.example"})
    users: list[dict[str, object]] = [
        {"email": "new1@shop.example", "phone": "+4791234567", "first_name": "Ann", "country": "NO"},
        {"email": "known@shop.example", "phone": "+4791234500"},
        {"email": "twice@shop.example"},
        {"email": "twice@shop.example", "external_id": "crm-9"},
        {"email": "test@test.com", "external_id": "crm-10"},
        {"fbp": FBP},
        {"email": "new2@shop.example"},
    ]
    prepared = [prepare_identity(u, region=None, settings=settings) for u in users]
    results = resolve_many(db_session, encryptor, prepared, source="batch", settings=settings, now=T0)
    assert [r.created for r in results] == [True, False, True, False, True, False, True]
    assert results[1].profile_id == known.profile_id
    assert results[1].attached == ("phone",)
    assert results[3].profile_id == results[2].profile_id
    assert results[3].attached == ("external_id",)
    assert results[4].notes == ("user.email: ignored: on the blocklist of placeholder values",)
    assert results[5].profile_id is None
    profile = db_session.get(Profile, results[0].profile_id)
    assert profile is not None
    assert profile.region == "NO"
    assert encryptor.decrypt_json(profile.traits_encrypted or "") == {"fn": "ann", "country": "no"}
    assert identities_of(db_session, results[0].profile_id or "") == {
        ("email", sha256_hex("new1@shop.example")),
        ("phone", sha256_hex("4791234567")),
    }
    # Running the same batch again creates nothing.
    again = resolve_many(db_session, encryptor, prepared, source="batch", settings=settings, now=T0)
    assert [r.profile_id for r in again] == [r.profile_id for r in results]
    assert not any(r.created for r in again)
