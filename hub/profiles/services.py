"""Identity resolution, merges, lookups and erasure (DESIGN.md §3-4).

Services take the session (and the ``FieldEncryptor``) as arguments and only ``flush()``; the caller owns the
commit. A race on the ``identities (kind, value_hash)`` unique constraint — two requests creating the same new
person at once — is retried instead of failing the request: new identities are inserted with ON CONFLICT DO
NOTHING (a lost race is undone and resolved again), and every resolution that merges or attaches runs inside a
SAVEPOINT. Calls that change nothing (a returning person) read one query and write nothing.

Decisions (documented here because event ingestion and consent webhooks rely on them):

* Strong identifiers (external_id, email, phone) attach to the profile they match; when they match several
  profiles those are merged into the oldest one, unless that would put two different external_ids on one
  person (a *conflict*: nothing is merged or attached).
* Weak identifiers (fbp, fbc) never merge and never create a profile. A call that carries *only* weak
  identifiers resolves to the profile already holding its fbp (else its fbc); a call with strong identifiers
  uses its weak ones only to attach them to the resolved profile when no other profile holds them yet.
* A merged-away profile keeps its row with ``merged_into_id`` pointing at the root (flattened: never a chain),
  its identities move to the root, and the journal (``profile_merges``) keeps what undoing needs.
* Consent is never touched by a merge; readers combine the ledgers of a cluster (root + merged-away profiles).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from hub.config import Settings
from hub.db import Call, UTCDateTime, json_document, json_recordset, new_id, pipelined
from hub.encryption import DecryptionError, FieldEncryptor
from hub.events.models import Event
from hub.profiles.identifiers import (
    IdentifierCandidate,
    IdentityPolicy,
    combine_traits,
    identifier_candidates,
    identity_policy,
    parse_region,
    plan_attachments,
    traits_of,
    updated_region,
)
from hub.profiles.models import Identity, Profile, ProfileMerge, SuppressedIdentifier
from hub.profiles.normalize import (
    IdentifierError,
    NormalizedUser,
    normalize_email,
    normalize_external_id,
    normalize_phone,
    normalize_user,
    sha256_hex,
)

log = logging.getLogger(__name__)

# Seeing an identifier again refreshes last_seen_at at most this often: an UPDATE per identifier per event
# would double the write load of ingestion for a value nobody needs to the second.
LAST_SEEN_RESOLUTION = timedelta(hours=1)
# Attempts of one resolution when concurrent writers keep winning the unique-constraint race.
MAX_ATTEMPTS = 4
PENDING_EVENT_STATUSES = ("pending", "retrying")


class ProfileNotFound(LookupError):
    """No profile has this id."""


class _Retry(Exception):
    """The rows read at the start of an attempt changed under it (a concurrent merge); start over."""


@dataclass(frozen=True)
class PreparedIdentity:
    """A user object normalized for resolution, with the call's validated region and every field problem."""

    normalized: NormalizedUser
    region: str | None
    errors: Mapping[str, str]


@dataclass(frozen=True)
class Resolution:
    """What one identify call did.

    ``profile_id``: the canonical (root) profile the call resolved to; None when suppressed, in conflict without
    a profile holding the call's external_id, or when nothing usable identified anyone.
    ``created``: a new profile was created. ``merged``: ids merged into ``profile_id`` by this call.
    ``attached``: ``"kind"`` of every identifier newly attached. ``suppressed``: an identifier belongs to an
    erased person; nothing was created or attached. ``notes``: ``"user.email: …"`` sentences for identifiers
    ignored (blocklist), not attached (limits) or left where they are (weak identifiers of another profile).
    ``conflict``/``conflict_field``: why nothing was merged (two external_ids). ``errors``: field problems from
    normalization and the context region (those fields were not used). ``traits_changed``/``region_changed``:
    an existing profile's traits / region were rewritten; ``region``: the profile's region after the call.
    """

    profile_id: str | None
    created: bool = False
    merged: tuple[str, ...] = ()
    attached: tuple[str, ...] = ()
    suppressed: bool = False
    normalized: NormalizedUser | None = None
    notes: tuple[str, ...] = ()
    conflict: str | None = None
    conflict_field: str | None = None
    errors: Mapping[str, str] = field(default_factory=dict)
    traits_changed: bool = False
    region: str | None = None
    region_changed: bool = False

    @property
    def changed(self) -> bool:
        """Whether the call wrote anything (besides refreshing last_seen_at)."""
        return bool(self.created or self.merged or self.attached or self.traits_changed or self.region_changed)


class IdentityConflict(Exception):
    """Raised by callers that prefer an exception to ``Resolution.conflict`` (see ``raise_for_conflict``)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def raise_for_conflict(resolution: Resolution) -> Resolution:
    if resolution.conflict is not None:
        raise IdentityConflict(resolution.conflict, resolution.conflict_field or "user")
    return resolution


# ----------------------------------------------------------------------------------------------------------
# Normalization for resolution
# ----------------------------------------------------------------------------------------------------------


def phone_regions_for(region: str | None, settings: Settings) -> tuple[str, ...]:
    """Fallback countries for national phone numbers after the user's own country (normalize_user applies that
    first): the call's region, then HUB_DEFAULT_PHONE_REGION."""
    return tuple(r for r in (region, settings.default_phone_region) if r)


def prepare_identity(user: Mapping[str, object], *, region: object, settings: Settings) -> PreparedIdentity:
    """Validate the context region and normalize the user. Fields with problems are listed in ``errors`` and
    left out; an API that must store nothing on bad input checks ``errors`` before resolving."""
    errors: dict[str, str] = {}
    valid_region: str | None = None
    if region is not None:
        try:
            valid_region = parse_region(region)
        except ValueError as error:
            errors["context.region"] = str(error)
    normalized = normalize_user(user, phone_regions=phone_regions_for(valid_region, settings))
    errors.update(normalized.errors)
    return PreparedIdentity(normalized=normalized, region=valid_region, errors=errors)


# ----------------------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------------------


def resolve_identity(
    session: Session,
    encryptor: FieldEncryptor,
    user: Mapping[str, object],
    *,
    region: object,
    source: str,
    settings: Settings,
    now: datetime,
) -> Resolution:
    """Normalize ``user`` and resolve it to a profile (fields that fail normalization are skipped and listed in
    ``Resolution.errors``). ``source`` names the caller for the merge journal (``api:identify``, ``events``,
    ``cmp:didomi``, ``import``)."""
    prepared = prepare_identity(user, region=region, settings=settings)
    return resolve_prepared(session, encryptor, prepared, source=source, settings=settings, now=now)


def resolve_prepared(
    session: Session,
    encryptor: FieldEncryptor,
    prepared: PreparedIdentity,
    *,
    source: str,
    settings: Settings,
    now: datetime,
    policy: IdentityPolicy | None = None,
) -> Resolution:
    """Resolve an already prepared identity (see ``prepare_identity``). ``policy`` defaults to the one built
    from ``settings.extra``; pass it in when resolving many rows with the same settings.

    The common cases cost no SAVEPOINT: a returning person whose call changes nothing is answered from one
    lookup query, and a new person is created with INSERTs whose identities use ON CONFLICT DO NOTHING (a lost
    race is undone and resolved again); on PostgreSQL the lookup and those INSERTs are one statement, so either
    case is one round trip. Everything else runs in a SAVEPOINT, retried when a concurrent writer wins a
    unique-constraint race or moves the rows read.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    policy = policy or identity_policy(settings.extra)
    candidates, notes = _usable_candidates(prepared, policy)
    base = Resolution(profile_id=None, normalized=prepared.normalized, errors=dict(prepared.errors))
    if not candidates:
        notes.append(NO_IDENTIFIER_NOTE)
        return _with(base, notes=tuple(notes))
    if session.get_bind().dialect.name == "postgresql" and any(c.strong for c in candidates):
        # One round trip whether the person is new or returning: the lookup creates the person when it finds none
        # of the identifiers (the rows are encrypted up front, a few microseconds wasted for a returning person).
        person = _new_person(encryptor, prepared, candidates, notes, policy, now)
        snapshot, inserted = _postgresql_lookup_or_create(session, candidates, person, now)
        if _is_new_person(candidates, snapshot):
            if inserted == {(row["kind"], row["value_hash"]) for row in person.identities}:
                return person.resolution
            # A concurrent writer took one of the identifiers after the lookup's snapshot: undo, look again.
            _undo_new_people(session, [person.profile["id"]])
            return _resolve_with_retries(session, encryptor, prepared, candidates, notes, base, source, policy, now)
    else:
        snapshot = _lookup(session, candidates)
    quick = _resolution_without_writes(encryptor, prepared, candidates, notes, base, snapshot, now, {})
    if quick is not None:
        resolution, touch = quick
        refresh_last_seen(session, touch, now)
        return resolution
    if _is_new_person(candidates, snapshot):
        [created] = _create_new_people(session, encryptor, [(prepared, candidates, notes)], policy, now)
        if created is not None:
            return created
        snapshot = None  # a concurrent writer took one of the identifiers: look again
    return _resolve_with_retries(session, encryptor, prepared, candidates, notes, base, source, policy, now, snapshot)


NO_IDENTIFIER_NOTE = "user: no usable identifier (email, phone, external_id, fbp or fbc); no profile resolved"


def _usable_candidates(
    prepared: PreparedIdentity, policy: IdentityPolicy
) -> tuple[list[IdentifierCandidate], list[str]]:
    """The call's identifiers the policy accepts, and a note for each one it ignores (in the call's order)."""
    notes: list[str] = []
    candidates: list[IdentifierCandidate] = []
    for candidate in identifier_candidates(prepared.normalized):
        reason = policy.blocked_reason(candidate)
        if reason is None:
            candidates.append(candidate)
        else:
            notes.append(f"{candidate.field}: ignored: {reason}")
    return candidates, notes


def _resolve_with_retries(
    session: Session,
    encryptor: FieldEncryptor,
    prepared: PreparedIdentity,
    candidates: list[IdentifierCandidate],
    notes: list[str],
    base: Resolution,
    source: str,
    policy: IdentityPolicy,
    now: datetime,
    snapshot: Snapshot | None = None,
) -> Resolution:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with session.begin_nested():
                return _resolve_once(
                    session, encryptor, prepared, candidates, notes, base, source, policy, now, snapshot
                )
        except (IntegrityError, _Retry) as error:
            # Another transaction created or moved one of these identifiers after we looked; look again.
            if attempt == MAX_ATTEMPTS:
                raise
            snapshot = None
            log.debug("identity resolution retried after a concurrent change (%s)", type(error).__name__)
    raise AssertionError("unreachable")  # pragma: no cover


# (kind, hash) pairs per lookup query in batch resolution: one expanding IN list per kind keeps the statement
# shape (and so SQLAlchemy's compiled-statement cache entry) the same whatever the batch holds.
LOOKUP_CHUNK = 500


def resolve_many(
    session: Session,
    encryptor: FieldEncryptor,
    items: Sequence[PreparedIdentity],
    *,
    source: str,
    settings: Settings,
    now: datetime,
    policy: IdentityPolicy | None = None,
    looked_up: Snapshot | None = None,
) -> list[Resolution]:
    """Resolve a batch (an events batch, an import batch) with the same outcome as calling ``resolve_prepared``
    for each item in order, in a handful of statements whatever the batch size.

    One lookup (per ``LOOKUP_CHUNK`` identifiers) reads every identifier of the batch with its profile, unless
    ``looked_up`` (``LookupAhead.read``, in the same transaction) answers them all. Items
    are then grouped: two items belong together when they share an identifier or a profile (only items of one
    group can see each other's writes, so groups are independent and only the order inside a group matters).

    * A group whose items all resolve without writing (a returning person with nothing new, a suppressed
      person, unknown browser identifiers alone) is answered from the lookup; stale ``last_seen_at`` values are
      refreshed in one UPDATE at the end.
    * A single new person (no identifier known, none shared in the batch) is created with the others by one
      statement on PostgreSQL (two multi-row INSERTs on SQLite), identities sorted by (kind, hash) and ON CONFLICT
      DO NOTHING, so no SAVEPOINT is needed; whoever lost a race to a concurrent writer is undone and resolved with
      the rest.
    * Every other group (merges, attachments, people repeated in the batch) is resolved item by item in input
      order inside one SAVEPOINT for the whole batch; if a concurrent writer interferes, that SAVEPOINT is rolled
      back and those items go through ``resolve_prepared`` one at a time.

    Lock order: new identities are inserted sorted by (kind, hash), profiles locked for a merge by id, groups
    resolved item by item in the order of their smallest identifier, so concurrent batches wait for each other
    instead of deadlocking in the common cases (callers still treat a deadlock as retryable).
    """
    plan = plan_many(session, encryptor, items, settings=settings, now=now, policy=policy, looked_up=looked_up)
    return complete_many(session, encryptor, plan, source=source, settings=settings, now=now, policy=policy)


@dataclass(frozen=True)
class BatchPlan:
    """What ``plan_many`` decided for a batch from one lookup, before anything was written.

    ``answers[i]``: item i's final resolution when it needs no write (refreshing last_seen_at aside), else None.
    ``touch[i]``: identity ids whose last_seen_at item i refreshes. ``writes``: whether completing the batch
    creates, attaches or merges anything; when it does not, the answers are final and a caller may store its
    own rows first and then refresh last_seen_at only for the items it kept (``touch_ids``).
    """

    items: tuple[PreparedIdentity, ...]
    answers: tuple[Resolution | None, ...]
    touch: tuple[tuple[int, ...], ...]
    new_people: tuple[int, ...]
    slow_groups: tuple[tuple[int, ...], ...]
    usable: tuple[tuple[tuple[IdentifierCandidate, ...], tuple[str, ...]], ...]
    bases: tuple[Resolution, ...]

    @property
    def writes(self) -> bool:
        return bool(self.new_people or self.slow_groups)

    def touch_ids(self, indexes: Collection[int]) -> list[int]:
        """The identity ids to refresh for these items, sorted (the order rows are locked in)."""
        return sorted({identity_id for index in indexes for identity_id in self.touch[index]})


def plan_many(
    session: Session,
    encryptor: FieldEncryptor,
    items: Sequence[PreparedIdentity],
    *,
    settings: Settings,
    now: datetime,
    policy: IdentityPolicy | None = None,
    looked_up: Snapshot | None = None,
) -> BatchPlan:
    """Read (one lookup per ``LOOKUP_CHUNK`` identifiers, unless ``looked_up`` answers every identifier of the
    batch) and decide how each item of a batch resolves; writes nothing. See ``resolve_many`` for the grouping."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    policy = policy or identity_policy(settings.extra)
    answers: list[Resolution | None] = [None] * len(items)
    touch: list[tuple[int, ...]] = [()] * len(items)
    usable: list[tuple[list[IdentifierCandidate], list[str]]] = []
    bases: list[Resolution] = []
    for index, prepared in enumerate(items):
        candidates, notes = _usable_candidates(prepared, policy)
        usable.append((candidates, notes))
        bases.append(Resolution(profile_id=None, normalized=prepared.normalized, errors=dict(prepared.errors)))
        if not candidates:
            answers[index] = _with(bases[index], notes=(*notes, NO_IDENTIFIER_NOTE))
    wanted = [c for candidates, _notes in usable for c in candidates]
    snapshot = looked_up
    if snapshot is None or not snapshot.keys.issuperset((c.kind, c.value_hash) for c in wanted):
        snapshot = _lookup(session, wanted)

    # Group items that share an identifier or a profile (union-find over item, identifier and profile nodes).
    parent: dict[object, object] = {}

    def find(node: object) -> object:
        root = node
        while parent.get(root, root) != root:
            root = parent[root]
        while node != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def union(a: object, b: object) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    for index, (candidates, _notes) in enumerate(usable):
        for c in candidates:
            key = (c.kind, c.value_hash)
            union(("item", index), ("key", key))
            found = snapshot.held.get(key)
            if found is not None:
                union(("item", index), ("profile", found.profile_id))
    groups: dict[object, list[int]] = {}
    for index, (candidates, _notes) in enumerate(usable):
        if candidates:
            groups.setdefault(find(("item", index)), []).append(index)

    traits_cache: dict[str, dict[str, str]] = {}
    new_people: list[int] = []
    slow_groups: list[tuple[int, ...]] = []
    for members in groups.values():
        if len(members) == 1 and _is_new_person(usable[members[0]][0], snapshot):
            new_people.append(members[0])
            continue
        quick: list[tuple[int, Resolution, list[int]]] = []
        for index in members:
            candidates, notes = usable[index]
            answer = _resolution_without_writes(
                encryptor, items[index], candidates, notes, bases[index], snapshot, now, traits_cache
            )
            if answer is None:
                break
            quick.append((index, *answer))
        else:
            for index, resolution, ids in quick:
                answers[index] = resolution
                touch[index] = tuple(ids)
            continue
        slow_groups.append(tuple(members))
    return BatchPlan(
        items=tuple(items),
        answers=tuple(answers),
        touch=tuple(touch),
        new_people=tuple(new_people),
        slow_groups=tuple(slow_groups),
        usable=tuple((tuple(candidates), tuple(notes)) for candidates, notes in usable),
        bases=tuple(bases),
    )


def complete_many(
    session: Session,
    encryptor: FieldEncryptor,
    plan: BatchPlan,
    *,
    source: str,
    settings: Settings,
    now: datetime,
    policy: IdentityPolicy | None = None,
) -> list[Resolution]:
    """Carry out a ``plan_many`` plan in the same transaction: create the new people, refresh last_seen_at,
    resolve the remaining groups; one resolution per item, in input order."""
    policy = policy or identity_policy(settings.extra)
    items, usable, bases = plan.items, plan.usable, plan.bases
    results = list(plan.answers)
    slow_groups = [list(members) for members in plan.slow_groups]
    if plan.new_people:
        batch = [(items[i], usable[i][0], usable[i][1]) for i in plan.new_people]
        created_people = _create_new_people(session, encryptor, batch, policy, now)
        for index, created in zip(plan.new_people, created_people, strict=True):
            if created is None:
                slow_groups.append([index])  # lost a race to a concurrent writer: resolve it like the others
            else:
                results[index] = created
    refresh_last_seen(session, plan.touch_ids(range(len(items))), now)

    if slow_groups:
        slow_groups.sort(key=lambda members: min((c.kind, c.value_hash) for i in members for c in usable[i][0]))
        slow = [index for members in slow_groups for index in members]
        done: dict[int, Resolution] = {}
        try:
            with session.begin_nested():
                for index in slow:
                    candidates, notes = usable[index]
                    done[index] = _resolve_once(
                        session,
                        encryptor,
                        items[index],
                        list(candidates),
                        list(notes),
                        bases[index],
                        source,
                        policy,
                        now,
                    )
        except (IntegrityError, _Retry) as error:
            log.debug("batch resolution went one item at a time after a concurrent change (%s)", type(error).__name__)
            done = {
                index: resolve_prepared(
                    session, encryptor, items[index], source=source, settings=settings, now=now, policy=policy
                )
                for index in slow
            }
        for index, resolution in done.items():
            results[index] = resolution
    return [r for r in results if r is not None]


def _is_new_person(candidates: Sequence[IdentifierCandidate], snapshot: Snapshot) -> bool:
    """No identifier of the call is held or suppressed, and a strong one can create the profile."""
    return any(c.strong for c in candidates) and not any(
        (c.kind, c.value_hash) in snapshot.held or (c.kind, c.value_hash) in snapshot.suppressed for c in candidates
    )


def _resolution_without_writes(
    encryptor: FieldEncryptor,
    prepared: PreparedIdentity,
    candidates: Sequence[IdentifierCandidate],
    notes_in: Sequence[str],
    base: Resolution,
    snapshot: Snapshot,
    now: datetime,
    traits_cache: dict[str, dict[str, str]],
) -> tuple[Resolution, list[int]] | None:
    """What ``_resolve_once`` would answer when, judged by the lookup alone, the call writes nothing (besides
    refreshing ``last_seen_at``: the identity ids to touch are returned with it); None when it would write.

    Written to give exactly ``_resolve_once``'s answer for those cases: a suppressed identifier, browser
    identifiers unknown to hub, or every identifier already held with one canonical profile among the strong
    ones (or the browser's owner), no new trait value and the same region.
    """
    notes = list(notes_in)
    held, suppressed = snapshot.held, snapshot.suppressed
    if any((c.kind, c.value_hash) in suppressed for c in candidates):
        fields = sorted({c.field for c in candidates if (c.kind, c.value_hash) in suppressed})
        notes.append(f"{', '.join(fields)}: belongs to an erased person; nothing is stored about them")
        return _with(base, suppressed=True, notes=tuple(notes)), []
    found_all = [held.get((c.kind, c.value_hash)) for c in candidates]
    strong_owners = {found.profile_id for c, found in zip(candidates, found_all, strict=True) if c.strong and found}
    if not any(c.strong for c in candidates):
        owner = next((found for found in found_all if found is not None), None)
        if owner is None:
            notes.append(WEAK_ONLY_NOTE)
            return _with(base, notes=tuple(notes)), []
        strong_owners = {owner.profile_id}
    if len(strong_owners) != 1 or any(found is None for found in found_all):
        return None  # a new profile, a merge, a conflict or an identifier to attach
    target = next(found for found in found_all if found is not None and found.profile_id in strong_owners)
    if target.root_merged or target.root_erased:
        return None  # moved under us: the full path retries
    touch: list[int] = []
    for candidate, found in zip(candidates, found_all, strict=True):
        assert found is not None
        if found.profile_id == target.profile_id:
            if now - found.last_seen_at >= LAST_SEEN_RESOLUTION:
                touch.append(found.identity_id)
        else:
            notes.append(f"{candidate.field}: held by another profile; weak identifiers never move or merge")
    if target.profile_id not in traits_cache:
        token = target.traits_encrypted
        value = encryptor.decrypt_json(token) if token else {}
        traits_cache[target.profile_id] = dict(value) if isinstance(value, dict) else {}
    stored = traits_cache[target.profile_id]
    if combine_traits(stored, traits_of(prepared.normalized)) != stored:
        return None
    if updated_region(target.region, prepared.region, prepared.normalized.values.get("country")) != target.region:
        return None
    return _with(base, profile_id=target.profile_id, notes=tuple(notes), region=target.region), touch


WEAK_ONLY_NOTE = (
    "user: only browser identifiers (fbp/fbc) unknown to hub; a profile is created only from an "
    "email, phone or external_id"
)


def refresh_last_seen(session: Session, identity_ids: Sequence[int], now: datetime) -> None:
    """Set last_seen_at of these identities to ``now`` (one UPDATE; rows locked in id order)."""
    if identity_ids:
        session.execute(
            update(Identity).where(Identity.id.in_(sorted(identity_ids))).values(last_seen_at=now),
            execution_options={"synchronize_session": False},
        )


def insert_ignoring_conflicts(session: Session, table: Any, index_elements: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` in the session's dialect (PostgreSQL, SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql_insert(table).on_conflict_do_nothing(index_elements=list(index_elements))
    return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(index_elements))


@functools.cache
def _postgresql_new_people_insert() -> Any:
    """The batch's new profiles and their identities in one statement (one round trip for any number of people)::

        WITH created_profiles AS (
            INSERT INTO profiles (...) SELECT ... FROM json_to_recordset(:profiles) AS new_profiles(...)
        )
        INSERT INTO identities (...) SELECT ... FROM json_to_recordset(:identities) AS new_identities(...)
        ON CONFLICT (kind, value_hash) DO NOTHING RETURNING kind, value_hash

    One JSON document per table keeps the text the same for any batch, so the driver's parse cache and the server's
    prepared statement serve it (a multi-row VALUES list of thousands of parameters made the driver re-parse a new
    query text for every batch). json_to_recordset keeps the document's order and the identities are read without a
    join, so they are still inserted sorted. PostgreSQL runs a data-modifying WITH to completion whether or not the
    main statement reads it (the profiles are inserted when there is no identity), and checks the identities'
    foreign key at the end of the statement, when the profiles are there. Both timestamps are the one ``now``
    parameter rather than values in the documents (``hub.db.json_insert``), which would cost a Python call per
    datetime in the otherwise C-encoded document."""
    now = bindparam("now", type_=UTCDateTime())
    profiles = json_recordset(
        "new_profiles", (("id", String()), ("traits_encrypted", Text()), ("region", String())), parameter="profiles"
    )
    created_profiles = (
        insert(Profile.__table__)
        .from_select(
            ["id", "traits_encrypted", "region", "created_at", "updated_at"],
            select(profiles.c.id, profiles.c.traits_encrypted, profiles.c.region, now, now),
        )
        .cte("created_profiles")
    )
    identities = json_recordset(
        "new_identities",
        (("profile_id", String()), ("kind", String()), ("value_hash", String()), ("value_encrypted", Text())),
        parameter="identities",
    )
    source = select(
        identities.c.profile_id, identities.c.kind, identities.c.value_hash, identities.c.value_encrypted, now, now
    )
    columns = ["profile_id", "kind", "value_hash", "value_encrypted", "created_at", "last_seen_at"]
    return (
        postgresql_insert(Identity.__table__)
        .from_select(columns, source)
        .on_conflict_do_nothing(index_elements=["kind", "value_hash"])
        .returning(Identity.kind, Identity.value_hash)
        .add_cte(created_profiles)
    )


@dataclass(frozen=True)
class _NewPerson:
    """The rows that create one new person (identities sorted by (kind, hash)) and the call's answer if they do."""

    profile: dict[str, Any]
    identities: list[dict[str, Any]]
    prepared: PreparedIdentity
    attached: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def resolution(self) -> Resolution:
        # Built on demand: a single call builds the rows before it knows whether the person is new.
        return Resolution(
            profile_id=self.profile["id"],
            created=True,
            attached=self.attached,
            normalized=self.prepared.normalized,
            notes=self.notes,
            errors=dict(self.prepared.errors),
            region=self.profile["region"],
        )


def _new_person(
    encryptor: FieldEncryptor,
    prepared: PreparedIdentity,
    usable: Sequence[IdentifierCandidate],
    blocked_notes: Sequence[str],
    policy: IdentityPolicy,
    now: datetime,
) -> _NewPerson:
    profile_id = new_id()
    traits = traits_of(prepared.normalized)
    region = updated_region(None, prepared.region, prepared.normalized.values.get("country"))
    profile = {
        "id": profile_id,
        "traits_encrypted": encryptor.encrypt_json(traits) if traits else None,
        "region": region,
        "created_at": now,
        "updated_at": now,
    }
    plan = plan_attachments(usable, {}, policy)
    notes = tuple(blocked_notes) + tuple(
        f"{c.field}: not attached: the profile already holds {policy.limit_for(c.kind)} {c.kind} identifier(s), "
        "the limit"
        for c in plan.over_limit
    )
    identities = [
        {
            "profile_id": profile_id,
            "kind": c.kind,
            "value_hash": c.value_hash,
            "value_encrypted": encryptor.encrypt_optional(c.value),
            "created_at": now,
            "last_seen_at": now,
        }
        for c in plan.attach
    ]
    identities.sort(key=lambda row: (row["kind"], row["value_hash"]))
    attached = tuple(c.kind for c in plan.attach)
    return _NewPerson(profile=profile, identities=identities, prepared=prepared, attached=attached, notes=notes)


def _create_new_people(
    session: Session,
    encryptor: FieldEncryptor,
    batch: Sequence[tuple[PreparedIdentity, Sequence[IdentifierCandidate], Sequence[str]]],
    policy: IdentityPolicy,
    now: datetime,
) -> list[Resolution | None]:
    """Create one profile per item (whose identifiers nobody holds) without a SAVEPOINT: one statement on PostgreSQL
    (``_postgresql_new_people_insert``), two multi-row INSERTs on SQLite.

    Identities are inserted sorted by (kind, hash) with ON CONFLICT DO NOTHING: concurrent batches then take the
    unique-index entries in one order and wait for each other rather than deadlock, and an identifier that a
    concurrent writer created first is skipped instead of failing the transaction. The items that lost such a
    race get their rows deleted again and None (the caller resolves them in full).
    """
    profiles, identities, results = _new_people_rows(encryptor, batch, policy, now)
    inserted: set[tuple[str, str]] = set()
    if session.get_bind().dialect.name == "postgresql":
        [created] = pipelined(session, [_new_people_call(profiles, identities, now)])
        inserted = {(row.kind, row.value_hash) for row in created}
    else:
        session.execute(insert(Profile.__table__), profiles)
        if identities:
            statement = insert_ignoring_conflicts(session, Identity.__table__, ("kind", "value_hash"))
            rows = session.execute(statement.returning(Identity.kind, Identity.value_hash), identities)
            inserted = {(row.kind, row.value_hash) for row in rows}
    lost = _lost_people(identities, inserted)
    _undo_new_people(session, lost)
    return [None if r.profile_id in lost else r for r in results]


def _new_people_rows(
    encryptor: FieldEncryptor,
    batch: Sequence[tuple[PreparedIdentity, Sequence[IdentifierCandidate], Sequence[str]]],
    policy: IdentityPolicy,
    now: datetime,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Resolution]]:
    """The new people's profile rows (by id) and identity rows (by kind and hash: the order concurrent batches
    take the unique index in), and their resolutions, in the batch's order."""
    profiles: list[dict[str, Any]] = []
    identities: list[dict[str, Any]] = []
    results: list[Resolution] = []
    for prepared, usable, blocked_notes in batch:
        person = _new_person(encryptor, prepared, usable, blocked_notes, policy, now)
        profiles.append(person.profile)
        identities.extend(person.identities)
        results.append(person.resolution)
    # Core inserts on the tables, without the ORM's per-object bookkeeping.
    profiles.sort(key=lambda row: row["id"])
    identities.sort(key=lambda row: (row["kind"], row["value_hash"]))
    return profiles, identities, results


def _new_people_call(
    profiles: Sequence[Mapping[str, Any]], identities: Sequence[Mapping[str, Any]], now: datetime
) -> Call:
    """PostgreSQL's one statement for new people (``_postgresql_new_people_insert``); it returns the identities
    it inserted."""
    return Call(
        _postgresql_new_people_insert(),
        {
            "profiles": json_document(
                [{key: row[key] for key in ("id", "traits_encrypted", "region")} for row in profiles]
            ),
            "identities": json_document(
                [
                    {key: row[key] for key in ("profile_id", "kind", "value_hash", "value_encrypted")}
                    for row in identities
                ]
            ),
            "now": now,
        },
    )


def _lost_people(identities: Sequence[Mapping[str, Any]], inserted: Collection[tuple[str, str]]) -> set[str]:
    """The new profiles that did not get one of their identities: a concurrent writer holds it."""
    return {row["profile_id"] for row in identities if (row["kind"], row["value_hash"]) not in inserted}


@dataclass(frozen=True)
class DeferredPeople:
    """PostgreSQL: a batch's new people as one statement not yet sent (``call``, for ``hub.db.pipelined``, ahead
    of whatever locks them), and the resolutions it gives if it inserts every identity. ``lost`` reads its rows:
    the items (indexes in the batch) whose person lost a race for an identifier to a concurrent writer; their
    resolutions do not hold, and the caller rolls its transaction back."""

    call: Call
    identities: tuple[Mapping[str, Any], ...]
    items: Mapping[str, int]  # by new profile id, the item it was made for

    def lost(self, rows: Sequence[Any]) -> set[int]:
        inserted = {(row.kind, row.value_hash) for row in rows}
        return {self.items[profile_id] for profile_id in _lost_people(self.identities, inserted)}


def resolve_many_deferring_new_people(
    encryptor: FieldEncryptor, plan: BatchPlan, *, settings: Settings, now: datetime
) -> tuple[list[Resolution], DeferredPeople] | None:
    """PostgreSQL: ``complete_many`` for a plan whose only writes are new people, with their statement left to
    the caller (sent with its next statements: a round trip less); None when the plan writes anything else (the
    caller completes it as usual). Equal to ``complete_many`` whenever ``DeferredPeople.lost`` finds nobody."""
    if plan.slow_groups or not plan.new_people or plan.touch_ids(range(len(plan.items))):
        return None
    policy = identity_policy(settings.extra)
    batch = [(plan.items[i], plan.usable[i][0], plan.usable[i][1]) for i in plan.new_people]
    profiles, identities, created = _new_people_rows(encryptor, batch, policy, now)
    results = list(plan.answers)
    for index, resolution in zip(plan.new_people, created, strict=True):
        results[index] = resolution
    items = {resolution.profile_id: index for index, resolution in zip(plan.new_people, created, strict=True)}
    deferred = DeferredPeople(_new_people_call(profiles, identities, now), tuple(identities), items)  # type: ignore[arg-type]
    return [r for r in results if r is not None], deferred


def _undo_new_people(session: Session, lost: Collection[str]) -> None:
    """Delete new profiles (and the identities they did get) that lost a race for one of their identifiers."""
    if lost:
        session.execute(
            delete(Identity).where(Identity.profile_id.in_(sorted(lost))),
            execution_options={"synchronize_session": False},
        )
        session.execute(
            delete(Profile).where(Profile.id.in_(sorted(lost))), execution_options={"synchronize_session": False}
        )
        log.debug("%d new profile(s) lost a race for an identifier and are resolved again", len(lost))


def _with(base: Resolution, **changes: Any) -> Resolution:
    # dataclasses.replace, without its walk over the fields (every field of Resolution is an init field).
    return Resolution(**{**base.__dict__, **changes})


class _Held(NamedTuple):
    """An identity row found for one of the call's identifiers, with its canonical (root) profile (a named tuple:
    a lookup builds one per identifier, and a frozen dataclass costs several times as much to build)."""

    identity_id: int
    profile_id: str  # canonical
    last_seen_at: datetime
    region: str | None  # the root's
    traits_encrypted: str | None  # the root's
    root_merged: bool  # a corrupted chain or a merge in flight: only the full path handles it
    root_erased: bool


@dataclass(frozen=True)
class Snapshot:
    """What one lookup read: identities held for the (kind, hash) pairs asked (``keys``), and the suppressed
    pairs."""

    held: Mapping[tuple[str, str], _Held]
    suppressed: frozenset[tuple[str, str]]
    keys: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class LookupAhead:
    """PostgreSQL: a batch's identity look-up made ready to go with other statements (``calls``, for
    ``hub.db.pipelined``); ``read`` turns their rows into what ``resolve_many`` takes as ``looked_up``."""

    keys: frozenset[tuple[str, str]]
    calls: tuple[Call, ...]

    def read(self, results: Sequence[Sequence[Any]]) -> Snapshot:
        return _snapshot(self.keys, (row for rows in results for row in rows))


def lookup_ahead(
    items: Sequence[PreparedIdentity], *, settings: Settings, policy: IdentityPolicy | None = None
) -> LookupAhead:
    """PostgreSQL: the look-up ``resolve_many`` makes for ``items``, to be sent ahead of it (with a batch's first
    statement, say), so that resolution starts without a round trip of its own."""
    policy = policy or identity_policy(settings.extra)
    keys = sorted({(c.kind, c.value_hash) for prepared in items for c in _usable_candidates(prepared, policy)[0]})
    return LookupAhead(frozenset(keys), tuple(Call(_postgresql_lookup_statement(), params) for params in _chunks(keys)))


def _chunks(keys: Sequence[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    """PostgreSQL's look-up parameters, a ``LOOKUP_CHUNK`` of (kind, hash) pairs each."""
    for start in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[start : start + LOOKUP_CHUNK]
        yield {"keys": json_document([{"kind": k, "value_hash": h} for k, h in chunk])}


def _pairs(kind_column: Any, hash_column: Any, keys: Sequence[tuple[str, str]]) -> ColumnElement[bool]:
    """``(kind = ? AND value_hash IN (...)) OR ...``, one term per kind: both databases answer it with probes of the
    (kind, value_hash) unique index, whereas SQLite answers ``(kind, value_hash) IN (...)`` with a table scan."""
    by_kind: dict[str, list[str]] = {}
    for kind, value_hash in keys:
        by_kind.setdefault(kind, []).append(value_hash)
    return or_(*(and_(kind_column == kind, hash_column.in_(hashes)) for kind, hashes in sorted(by_kind.items())))


def _hash_param(kind: str) -> str:
    return "hashes_" + "".join(ch if ch.isalnum() else "_" for ch in kind)


def _held_by_root(query: Select[Any], root: Any) -> Select[Any]:
    """``query`` with each identity's id and last use and the canonical profile holding it (``root``: the
    holder's ``merged_into_id`` followed, in the same query)."""
    return (
        query.add_columns(
            Identity.id,
            Identity.last_seen_at,
            root.id.label("profile_id"),
            root.merged_into_id,
            root.erased_at,
            root.region,
            root.traits_encrypted,
        )
        .select_from(Identity)
        .join(Profile, Profile.id == Identity.profile_id)
        .join(root, root.id == func.coalesce(Profile.merged_into_id, Profile.id))
    )


@functools.lru_cache(maxsize=64)
def _lookup_statement(kinds: tuple[str, ...]) -> Any:
    """SQLite's lookup for identifiers of these kinds, built once per combination of kinds: the hashes are bind
    parameters, so SQLAlchemy's compiled-statement cache serves every later call (building the expression anew for
    each event cost more than the query itself). Each kind's term is an expanded IN list, which SQLite answers with
    probes of the (kind, value_hash) unique index; the canonical profile comes from a join on the holder's
    ``merged_into_id`` (one query, not two)."""
    root = aliased(Profile, name="root")

    def where(kind_column: Any, hash_column: Any) -> ColumnElement[bool]:
        return or_(
            *(
                and_(kind_column == kind, hash_column.in_(bindparam(_hash_param(kind), expanding=True)))
                for kind in kinds
            )
        )

    identities = _held_by_root(select(literal("i").label("source"), Identity.kind, Identity.value_hash), root).where(
        where(Identity.kind, Identity.value_hash)
    )
    suppressed = select(
        literal("s").label("source"),
        SuppressedIdentifier.kind,
        SuppressedIdentifier.value_hash,
        SuppressedIdentifier.id,
        SuppressedIdentifier.created_at,
        null().label("profile_id"),
        null().label("merged_into_id"),
        null().label("erased_at"),
        null().label("region"),
        null().label("traits_encrypted"),
    ).where(where(SuppressedIdentifier.kind, SuppressedIdentifier.value_hash))
    return union_all(identities, suppressed)


@functools.cache
def _postgresql_lookup_statement() -> Any:
    """PostgreSQL's lookup: the (kind, hash) pairs as one JSON document, each pair probed on its own in a LATERAL
    subquery. One query text for any batch, so the driver's parse cache and the server's prepared statement serve
    it; and one index probe per pair whatever the planner believes about the tables' sizes. A join or an
    ``= ANY(array)`` filter leaves the access path to the planner, which on a young or never-analyzed database
    picked sequential scans and kept them in the connection's cached generic plan as the tables grew (a batch's
    lookup then cost tens of milliseconds of server CPU). ``LIMIT 1`` states what the unique constraint already
    guarantees, and keeps PostgreSQL from flattening the subquery into a join it could plan as a hash join."""
    wanted = json_recordset("wanted", (("kind", String()), ("value_hash", String())), parameter="keys")
    root = aliased(Profile, name="root")
    held = (
        _held_by_root(select(), root)
        .where(Identity.kind == wanted.c.kind, Identity.value_hash == wanted.c.value_hash)
        .limit(1)
        .lateral("held")
    )
    blocked = (
        select(SuppressedIdentifier.id)
        .where(SuppressedIdentifier.kind == wanted.c.kind, SuppressedIdentifier.value_hash == wanted.c.value_hash)
        .limit(1)
        .lateral("blocked")
    )
    identities = select(
        literal("i").label("source"),
        wanted.c.kind,
        wanted.c.value_hash,
        held.c.id,
        held.c.last_seen_at,
        held.c.profile_id,
        held.c.merged_into_id,
        held.c.erased_at,
        held.c.region,
        held.c.traits_encrypted,
    ).select_from(wanted.join(held, true()))
    suppressed = select(
        literal("s").label("source"),
        wanted.c.kind,
        wanted.c.value_hash,
        blocked.c.id,
        null().label("last_seen_at"),
        null().label("profile_id"),
        null().label("merged_into_id"),
        null().label("erased_at"),
        null().label("region"),
        null().label("traits_encrypted"),
    ).select_from(wanted.join(blocked, true()))
    return union_all(identities, suppressed)


# ``_postgresql_lookup_statement`` for one call, which also creates the person when none of the identifiers is held
# or suppressed: a new person costs one round trip instead of three (lookup, profile, identities). The lookup and
# the INSERTs see one snapshot, so an identifier a concurrent writer commits after it is skipped by ON CONFLICT DO
# NOTHING and reported missing from ``new_identities`` (the caller undoes the profile and resolves again). The
# foreign key of the new identities is checked at the end of the statement, when the profile row is there.
_POSTGRESQL_LOOKUP_OR_CREATE = text(
    """
WITH wanted AS (
    SELECT * FROM json_to_recordset(CAST(:keys AS JSON)) AS wanted(kind VARCHAR, value_hash VARCHAR)
),
found AS (
    SELECT 'i' AS source, wanted.kind, wanted.value_hash,
        json_build_array(held.id, held.last_seen_at, held.profile_id, held.merged_into_id IS NOT NULL,
            held.erased_at IS NOT NULL, held.region, held.traits_encrypted) AS held
    FROM wanted JOIN LATERAL (
        SELECT identities.id, identities.last_seen_at, root.id AS profile_id, root.merged_into_id, root.erased_at,
            root.region, root.traits_encrypted
        FROM identities
        JOIN profiles ON profiles.id = identities.profile_id
        JOIN profiles AS root ON root.id = coalesce(profiles.merged_into_id, profiles.id)
        WHERE identities.kind = wanted.kind AND identities.value_hash = wanted.value_hash
        LIMIT 1
    ) AS held ON true
    UNION ALL
    SELECT 's', wanted.kind, wanted.value_hash, NULL
    FROM wanted JOIN LATERAL (
        SELECT suppressed_identifiers.id FROM suppressed_identifiers
        WHERE suppressed_identifiers.kind = wanted.kind AND suppressed_identifiers.value_hash = wanted.value_hash
        LIMIT 1
    ) AS blocked ON true
),
new_profile AS (
    INSERT INTO profiles (id, traits_encrypted, region, created_at, updated_at)
    SELECT CAST(:profile_id AS VARCHAR), CAST(:traits_encrypted AS TEXT), CAST(:region AS VARCHAR), :now, :now
    WHERE NOT EXISTS (SELECT 1 FROM found)
    RETURNING id
),
new_identities AS (
    INSERT INTO identities (profile_id, kind, value_hash, value_encrypted, created_at, last_seen_at)
    SELECT new_profile.id, new_rows.kind, new_rows.value_hash, new_rows.value_encrypted, :now, :now
    FROM new_profile CROSS JOIN json_to_recordset(CAST(:identities AS JSON))
        AS new_rows(kind VARCHAR, value_hash VARCHAR, value_encrypted TEXT)
    ON CONFLICT (kind, value_hash) DO NOTHING
    RETURNING kind, value_hash
)
SELECT * FROM found
UNION ALL
SELECT 'n', kind, value_hash, NULL FROM new_identities
"""
)


@functools.lru_cache(maxsize=8)
def _postgresql_lookup_or_create_sql(dialect: Any) -> str:
    return str(_POSTGRESQL_LOOKUP_OR_CREATE.compile(dialect=dialect))


def _postgresql_lookup_or_create(
    session: Session, candidates: Collection[IdentifierCandidate], person: _NewPerson, now: datetime
) -> tuple[Snapshot, set[tuple[str, str]]]:
    """The lookup of one call's identifiers, creating ``person`` when it finds none: the snapshot, and the (kind,
    hash) pairs of the identities inserted (empty unless the profile was created)."""
    if session.autoflush:
        session.flush()  # what the ORM lookup statement does first
    keys = sorted({(c.kind, c.value_hash) for c in candidates})
    profile = person.profile
    params = {
        "keys": json_document([{"kind": k, "value_hash": h} for k, h in keys]),
        "profile_id": profile["id"],
        "traits_encrypted": profile["traits_encrypted"],
        "region": profile["region"],
        "identities": json_document(
            [
                {"kind": row["kind"], "value_hash": row["value_hash"], "value_encrypted": row["value_encrypted"]}
                for row in person.identities
            ]
        ),
        "now": now,
    }
    # The driver's SQL text, compiled once, and each identity found as one JSON array: SQLAlchemy's statement cache,
    # bind processing and per-column result set-up cost more than the rest of a returning person's resolution.
    # ``now`` is aware (checked by the caller); JSON renders timestamptz as ISO 8601 with its offset.
    connection = session.connection()
    held: dict[tuple[str, str], _Held] = {}
    blocked: set[tuple[str, str]] = set()
    inserted: set[tuple[str, str]] = set()
    for source, kind, value_hash, found in connection.exec_driver_sql(
        _postgresql_lookup_or_create_sql(connection.dialect), params
    ):
        if source == "i":
            identity_id, last_seen_at, profile_id, root_merged, root_erased, region, traits_encrypted = found
            held[(kind, value_hash)] = _Held(
                identity_id=identity_id,
                profile_id=profile_id,
                last_seen_at=datetime.fromisoformat(last_seen_at).astimezone(UTC),
                region=region,
                traits_encrypted=traits_encrypted,
                root_merged=root_merged,
                root_erased=root_erased,
            )
        elif source == "s":
            blocked.add((kind, value_hash))
        else:
            inserted.add((kind, value_hash))
    return Snapshot(held=held, suppressed=frozenset(blocked)), inserted


def _lookup(session: Session, candidates: Collection[IdentifierCandidate]) -> Snapshot:
    """The identities held for these (kind, hash) pairs and which pairs are suppressed: one round trip per
    ``LOOKUP_CHUNK`` pairs."""
    keys = sorted({(c.kind, c.value_hash) for c in candidates})
    rows: list[Any] = []
    if session.get_bind().dialect.name == "postgresql":
        for params in _chunks(keys):
            rows.extend(session.execute(_postgresql_lookup_statement(), params))
    else:
        for start in range(0, len(keys), LOOKUP_CHUNK):
            by_kind: dict[str, list[str]] = {}
            for kind, value_hash in keys[start : start + LOOKUP_CHUNK]:
                by_kind.setdefault(kind, []).append(value_hash)
            statement = _lookup_statement(tuple(sorted(by_kind)))
            rows.extend(session.execute(statement, {_hash_param(kind): hashes for kind, hashes in by_kind.items()}))
    return _snapshot(frozenset(keys), rows)


def _snapshot(keys: frozenset[tuple[str, str]], rows: Iterable[Any]) -> Snapshot:
    """A look-up's rows (either statement's) as a ``Snapshot``."""
    held: dict[tuple[str, str], _Held] = {}
    blocked: set[tuple[str, str]] = set()
    for row in rows:
        if row.source == "s":
            blocked.add((row.kind, row.value_hash))
        else:
            held[(row.kind, row.value_hash)] = _Held(
                identity_id=row.id,
                profile_id=row.profile_id,
                # The compound select takes its result types from the first select: UTC-aware datetimes.
                last_seen_at=row.last_seen_at,
                region=row.region,
                traits_encrypted=row.traits_encrypted,
                root_merged=row.merged_into_id is not None,
                root_erased=row.erased_at is not None,
            )
    return Snapshot(held=held, suppressed=frozenset(blocked), keys=keys)


def _resolve_once(
    session: Session,
    encryptor: FieldEncryptor,
    prepared: PreparedIdentity,
    candidates: list[IdentifierCandidate],
    notes_in: list[str],
    base: Resolution,
    source: str,
    policy: IdentityPolicy,
    now: datetime,
    snapshot: Snapshot | None = None,
) -> Resolution:
    """One full resolution (callers hold a SAVEPOINT); ``snapshot``: a lookup of ``candidates`` made earlier in
    this transaction, when nothing can have changed since."""
    notes = list(notes_in)
    snapshot = snapshot or _lookup(session, candidates)
    held, suppressed = snapshot.held, snapshot.suppressed
    if suppressed:
        fields = sorted({c.field for c in candidates if (c.kind, c.value_hash) in suppressed})
        notes.append(f"{', '.join(fields)}: belongs to an erased person; nothing is stored about them")
        return _with(base, suppressed=True, notes=tuple(notes))

    strong = [c for c in candidates if c.strong]
    weak = [c for c in candidates if not c.strong]
    matched: list[str] = []
    for candidate in strong:
        found = held.get((candidate.kind, candidate.value_hash))
        if found is not None and found.profile_id not in matched:
            matched.append(found.profile_id)

    if not strong:
        # Weak identifiers only: follow the browser to the profile that already holds it, never create one.
        owner = next((held[k].profile_id for c in weak if (k := (c.kind, c.value_hash)) in held), None)
        if owner is None:
            notes.append(WEAK_ONLY_NOTE)
            return _with(base, notes=tuple(notes))
        matched = [owner]

    profiles = _load_profiles(session, matched, lock=len(matched) > 1)
    held_rows = _identities_of(session, [p.id for p in profiles]) if profiles else []

    if len(profiles) > 1:
        external_ids = {h for (_pid, kind, h) in held_rows if kind == "external_id"}
        external_ids |= {c.value_hash for c in strong if c.kind == "external_id"}
        if len(external_ids) > 1:
            call_ext = next((c for c in strong if c.kind == "external_id"), None)
            holder = held.get((call_ext.kind, call_ext.value_hash)) if call_ext else None
            message = (
                "These identifiers belong to profiles with different external_ids, and two external_ids are "
                "never merged; nothing was merged or attached. Check which person the email/phone belongs to."
            )
            notes.append(f"user.external_id: {message}")
            return _with(
                base,
                profile_id=holder.profile_id if holder else None,
                notes=tuple(notes),
                conflict=message,
                conflict_field="user.external_id",
            )

    created = False
    merged: list[str] = []
    if not profiles:
        new_traits = traits_of(prepared.normalized)
        target = Profile(
            id=new_id(),
            created_at=now,
            updated_at=now,
            traits_encrypted=encryptor.encrypt_json(new_traits) if new_traits else None,
            region=updated_region(None, prepared.region, prepared.normalized.values.get("country")),
        )
        session.add(target)
        # The models declare no relationship between profiles and identities, so the unit of work would not
        # know to insert the profile first: flush it now.
        session.flush()
        created = True
        previous_traits = stored_traits = new_traits
    else:
        ordered = sorted(profiles, key=lambda p: (p.created_at, p.id))
        target = ordered[0]
        by_age_of_update = sorted(profiles, key=lambda p: (p.updated_at, p.id))
        stored_traits = previous_traits = _traits(encryptor, target)
        if len(ordered) > 1:
            previous_traits = combine_traits(*(_traits(encryptor, p) for p in by_age_of_update))
            for loser in ordered[1:]:
                link = next(
                    c
                    for c in strong
                    if (found := held.get((c.kind, c.value_hash))) is not None and found.profile_id == loser.id
                )
                _merge(session, target, loser, link, source, now)
                merged.append(loser.id)
            if target.region is None:
                target.region = next((p.region for p in reversed(by_age_of_update) if p.region), None)

    # Which of the call's identifiers are new to the (merged) profile, and which are someone else's browser.
    held_counts: dict[str, int] = {}
    held_keys = set()
    for _pid, kind, value_hash in held_rows:
        held_counts[kind] = held_counts.get(kind, 0) + 1
        held_keys.add((kind, value_hash))
    new: list[IdentifierCandidate] = []
    touch: list[int] = []
    for candidate in candidates:
        key = (candidate.kind, candidate.value_hash)
        found = held.get(key)
        if found is None:
            new.append(candidate)
        elif found.profile_id == target.id or found.profile_id in merged:
            if now - found.last_seen_at >= LAST_SEEN_RESOLUTION:
                touch.append(found.identity_id)
        else:
            notes.append(f"{candidate.field}: held by another profile; weak identifiers never move or merge")
    plan = plan_attachments(new, held_counts, policy)
    for candidate in plan.over_limit:
        notes.append(
            f"{candidate.field}: not attached: the profile already holds {policy.limit_for(candidate.kind)} "
            f"{candidate.kind} identifier(s), the limit"
        )
    for candidate in plan.attach:
        session.add(
            Identity(
                profile_id=target.id,
                kind=candidate.kind,
                value_hash=candidate.value_hash,
                value_encrypted=encryptor.encrypt_optional(candidate.value),
                created_at=now,
                last_seen_at=now,
            )
        )
    if touch:
        session.execute(
            update(Identity).where(Identity.id.in_(touch)).values(last_seen_at=now),
            execution_options={"synchronize_session": False},
        )

    traits = combine_traits(previous_traits, traits_of(prepared.normalized))
    traits_changed = traits != stored_traits
    if traits_changed:
        target.traits_encrypted = encryptor.encrypt_json(traits) if traits else None
    region = updated_region(target.region, prepared.region, prepared.normalized.values.get("country"))
    region_changed = region != target.region
    if region_changed:
        target.region = region
    if created or merged or plan.attach or traits_changed or region_changed:
        target.updated_at = now
    session.flush()
    return _with(
        base,
        profile_id=target.id,
        created=created,
        merged=tuple(merged),
        attached=tuple(c.kind for c in plan.attach),
        notes=tuple(notes),
        traits_changed=traits_changed,
        region=target.region,
        region_changed=region_changed,
    )


def _load_profiles(session: Session, ids: list[str], *, lock: bool) -> list[Profile]:
    if not ids:
        return []
    query = select(Profile).where(Profile.id.in_(ids))
    if lock:
        # PostgreSQL: two calls merging the same profiles take turns (SQLite serializes writers anyway); rows are
        # locked in id order, so two merges of overlapping profiles cannot each hold what the other waits for.
        query = query.order_by(Profile.id).with_for_update()
    profiles = list(session.scalars(query))
    if len(profiles) != len(ids) or any(p.merged_into_id is not None or p.erased_at is not None for p in profiles):
        raise _Retry
    return profiles


def _identities_of(session: Session, profile_ids: list[str]) -> list[tuple[str, str, str]]:
    rows = session.execute(
        select(Identity.profile_id, Identity.kind, Identity.value_hash).where(Identity.profile_id.in_(profile_ids))
    )
    return [(r.profile_id, r.kind, r.value_hash) for r in rows]


def _traits(encryptor: FieldEncryptor, profile: Profile) -> dict[str, str]:
    if not profile.traits_encrypted:
        return {}
    value = encryptor.decrypt_json(profile.traits_encrypted)
    return dict(value) if isinstance(value, dict) else {}


def _merge(
    session: Session, winner: Profile, loser: Profile, link: IdentifierCandidate, source: str, now: datetime
) -> None:
    """Fold ``loser`` into ``winner``: identities move, profiles merged into the loser re-point at the winner
    (flattened), and the journal records what undoing needs. Traits are combined by the caller."""
    from hub.consent.services import record_merge_denials  # consent builds on identity; imported late

    moved = list(session.scalars(select(Identity.id).where(Identity.profile_id == loser.id).order_by(Identity.id)))
    repointed = list(session.scalars(select(Profile.id).where(Profile.merged_into_id == loser.id)))
    # Before anything moves: the two people's consent histories are compared as they stood apart.
    record_merge_denials(
        session,
        winner_id=winner.id,
        winner_members=cluster_ids(session, winner.id),
        loser_id=loser.id,
        loser_members=[loser.id, *repointed],
        now=now,
    )
    details: dict[str, Any] = {
        "moved_identity_ids": moved,
        "repointed_profile_ids": repointed,
        "loser_traits_encrypted": loser.traits_encrypted,
        "loser_region": loser.region,
        "winner_traits_encrypted_before": winner.traits_encrypted,
        "winner_region_before": winner.region,
    }
    if moved:
        session.execute(
            update(Identity).where(Identity.profile_id == loser.id).values(profile_id=winner.id),
            execution_options={"synchronize_session": False},
        )
    if repointed:
        session.execute(
            update(Profile).where(Profile.merged_into_id == loser.id).values(merged_into_id=winner.id, updated_at=now),
            execution_options={"synchronize_session": False},
        )
    loser.merged_into_id = winner.id
    # The combined traits live on the winner; the loser's copy stays only in the journal (for undo).
    loser.traits_encrypted = None
    loser.updated_at = now
    session.add(
        ProfileMerge(
            winner_id=winner.id,
            loser_id=loser.id,
            link_kind=link.kind,
            link_hash=link.value_hash,
            source=source[:120],
            details=details,
            created_at=now,
        )
    )


# ----------------------------------------------------------------------------------------------------------
# Attaching other identities (CMP user ids) and lookups
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    """Outcome of ``attach_identity``: ``status`` is ``attached``, ``already_attached``, ``held_by_other``
    (another cluster holds it; nothing changed), ``suppressed`` (an erased person's) or ``over_limit``."""

    status: str
    profile_id: str
    identity_id: int | None = None
    other_profile_id: str | None = None


def attach_identity(
    session: Session,
    encryptor: FieldEncryptor,
    profile_id: str,
    kind: str,
    value_hash: str,
    value_plain: str | None,
    *,
    now: datetime,
    policy: IdentityPolicy | None = None,
) -> Attachment:
    """Attach one identifier (e.g. kind ``cmp:didomi``, hash of the CMP's user id) to a profile's cluster root.

    Never merges: an identifier already held by another cluster is left there (``held_by_other``).
    """
    if not kind or len(kind) > 40:
        raise ValueError("kind must be 1 to 40 characters, e.g. 'cmp:didomi'")
    if len(value_hash) != 64:
        raise ValueError("value_hash must be a SHA-256 hex digest")
    value_hash = value_hash.lower()
    policy = policy or identity_policy()
    root_id = canonical_profile_id(session, profile_id)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with session.begin_nested():
                if session.scalar(
                    select(SuppressedIdentifier.id).where(
                        SuppressedIdentifier.kind == kind, SuppressedIdentifier.value_hash == value_hash
                    )
                ):
                    return Attachment("suppressed", root_id)
                existing = session.execute(
                    select(Identity.id, Identity.profile_id).where(
                        Identity.kind == kind, Identity.value_hash == value_hash
                    )
                ).first()
                if existing is not None:
                    holder = canonical_profile_id(session, existing.profile_id)
                    if holder == root_id:
                        return Attachment("already_attached", root_id, existing.id)
                    return Attachment("held_by_other", root_id, existing.id, holder)
                root = session.get(Profile, root_id)
                if root is None or root.erased_at is not None:
                    return Attachment("suppressed", root_id)
                held = session.scalar(
                    select(func.count())
                    .select_from(Identity)
                    .where(Identity.profile_id == root_id, Identity.kind == kind)
                )
                if (held or 0) >= policy.limit_for(kind):
                    return Attachment("over_limit", root_id)
                identity = Identity(
                    profile_id=root_id,
                    kind=kind,
                    value_hash=value_hash,
                    value_encrypted=encryptor.encrypt_optional(value_plain),
                    created_at=now,
                    last_seen_at=now,
                )
                session.add(identity)
                session.flush()
                return Attachment("attached", root_id, identity.id)
        except IntegrityError:
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


_ROOT_OF = aliased(Profile, name="root_of")
# A profile's merged_into_id and whether that root is itself merged, in one query (built once; bind parameter).
_CANONICAL_STATEMENT = (
    select(Profile.merged_into_id, _ROOT_OF.id.label("root_id"), _ROOT_OF.merged_into_id.label("root_merged_into_id"))
    .outerjoin(_ROOT_OF, _ROOT_OF.id == Profile.merged_into_id)
    .where(Profile.id == bindparam("profile_id"))
)


def canonical_profile_id(session: Session, profile_id: str) -> str:
    """The root of the cluster ``profile_id`` belongs to (itself unless merged away). Raises ProfileNotFound.

    One query: the profile joined to the profile it was merged into (merges are flattened, so that is the root)."""
    current = profile_id
    for _ in range(8):  # flattened merges make this one hop; the bound guards against a corrupted chain
        row = session.execute(_CANONICAL_STATEMENT, {"profile_id": current}).first()
        if row is None:
            raise ProfileNotFound(profile_id)
        if row.merged_into_id is None:
            return current
        if row.root_id is None:
            raise ProfileNotFound(profile_id)
        if row.root_merged_into_id is None:
            return row.root_id
        current = row.root_merged_into_id
    raise ProfileNotFound(profile_id)


def cluster_ids(session: Session, root_id: str) -> list[str]:
    """The root first, then every profile merged into it (oldest first)."""
    others = session.scalars(
        select(Profile.id).where(Profile.merged_into_id == root_id).order_by(Profile.created_at, Profile.id)
    )
    return [root_id, *others]


# One probe of the identities (kind, value_hash) unique index joined to the holder's primary key; built once so a
# lookup pays no expression building or cache-key generation (lookup p99 is an API target).
_FIND_BY_IDENTITY_STATEMENT = (
    select(Profile.id, Profile.merged_into_id)
    .join(Identity, Identity.profile_id == Profile.id)
    .where(Identity.kind == bindparam("kind"), Identity.value_hash == bindparam("value_hash"))
)


def find_profile_by_identity(session: Session, kind: str, value_hash: str) -> str | None:
    """The canonical profile holding (kind, hash), or None."""
    row = session.execute(_FIND_BY_IDENTITY_STATEMENT, {"kind": kind, "value_hash": value_hash.lower()}).first()
    if row is None:
        return None
    return row.merged_into_id or row.id


LOOKUP_KINDS = ("email", "phone", "external_id")


def lookup_profile(
    session: Session, kind: str, raw_value: str, *, settings: Settings, region: str | None = None
) -> str | None:
    """Normalize a raw email/phone/external_id exactly as identify does and return the canonical profile holding
    it, or None. Raises IdentifierError when the value cannot be normalized (field: the kind)."""
    if kind not in LOOKUP_KINDS:
        raise ValueError(f"kind must be one of {', '.join(LOOKUP_KINDS)}")
    if kind == "email":
        value = normalize_email(raw_value)
    elif kind == "phone":
        value = normalize_phone(raw_value, phone_regions_for(region, settings))
    else:
        value = normalize_external_id(raw_value)
    if not value:
        raise IdentifierError(kind, "is empty")
    return find_profile_by_identity(session, kind, sha256_hex(value))


# ----------------------------------------------------------------------------------------------------------
# Erasure
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErasureSummary:
    profile_id: str  # the cluster root
    profiles: tuple[str, ...]  # every profile of the cluster, now tombstones
    identities_removed: int
    identifiers_suppressed: int  # newly added to the suppression list
    traits_wiped: int  # profiles whose traits were removed
    events_deleted: int  # pending/retrying events of the cluster
    events_scrubbed: int  # other events whose encrypted user data (identifiers, IP, user agent) was removed
    merges_redacted: int  # journal rows whose encrypted traits were removed
    consent_records_kept: int
    cmp_deliveries_redacted: int = 0  # raw CMP webhook bodies (they carry the person's identifiers) emptied

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile_id": self.profile_id,
            "profiles": list(self.profiles),
            "removed": {
                "identities": self.identities_removed,
                "traits": self.traits_wiped,
                "pending_events": self.events_deleted,
                "event_user_data": self.events_scrubbed,
                "merge_journal_traits": self.merges_redacted,
                "cmp_webhook_bodies": self.cmp_deliveries_redacted,
            },
            "kept": {
                "profile_tombstones": len(self.profiles),
                "suppressed_identifiers_added": self.identifiers_suppressed,
                "consent_records": self.consent_records_kept,
            },
        }


def erase_profile(session: Session, profile_id: str, reason: str, *, now: datetime) -> ErasureSummary:
    """Erase the person behind ``profile_id`` (its whole cluster).

    Removed: identities (their (kind, hash) go on the suppression list so later events never re-create the
    person), traits and region, pending/retrying events, the encrypted user data of other events, and the
    encrypted traits in the merge journal. Kept: the profile rows as tombstones (``erased_at``) because consent
    evidence references them, and the consent records themselves, which hold no raw identifiers.
    """
    from hub.cmp.models import CmpInboxItem
    from hub.consent.models import ConsentRecord

    root = canonical_profile_id(session, profile_id)
    members = cluster_ids(session, root)
    identities = session.execute(
        select(Identity.kind, Identity.value_hash).where(Identity.profile_id.in_(members))
    ).all()
    keys = {(r.kind, r.value_hash) for r in identities}
    already = set()
    if keys:
        already = {
            (r.kind, r.value_hash)
            for r in session.execute(
                select(SuppressedIdentifier.kind, SuppressedIdentifier.value_hash).where(
                    _pairs(SuppressedIdentifier.kind, SuppressedIdentifier.value_hash, sorted(keys))
                )
            )
        }
    for kind, value_hash in sorted(keys - already):
        session.add(SuppressedIdentifier(kind=kind, value_hash=value_hash, reason=reason[:255], created_at=now))
    removed = session.execute(
        delete(Identity).where(Identity.profile_id.in_(members)), execution_options={"synchronize_session": False}
    ).rowcount
    profiles = list(session.scalars(select(Profile).where(Profile.id.in_(members))))
    wiped = 0
    for profile in profiles:
        if profile.traits_encrypted is not None:
            wiped += 1
        profile.traits_encrypted = None
        profile.region = None
        if profile.erased_at is None:
            profile.erased_at = now
        profile.updated_at = now
    events_deleted = session.execute(
        delete(Event).where(Event.profile_id.in_(members), Event.status.in_(PENDING_EVENT_STATUSES)),
        execution_options={"synchronize_session": False},
    ).rowcount
    # Dead letters keep the payload as sent (hashed identifiers, IP, user agent): it goes with the user data.
    events_scrubbed = session.execute(
        update(Event)
        .where(
            Event.profile_id.in_(members),
            Event.user_data_encrypted.is_not(None) | Event.dead_payload_encrypted.is_not(None),
        )
        .values(user_data_encrypted=None, dead_payload_encrypted=None, context_purged_at=now),
        execution_options={"synchronize_session": False},
    ).rowcount
    # The raw webhook bodies behind the person's consent records name them (email, CMP user id). The body's hash
    # stays on the inbox row and in the records' proof, so the evidence that a delivery happened is kept.
    inbox_ids = {
        proof["inbox_id"]
        for proof in session.scalars(select(ConsentRecord.proof).where(ConsentRecord.profile_id.in_(members)))
        if isinstance(proof, dict) and isinstance(proof.get("inbox_id"), int)
    }
    cmp_redacted = 0
    if inbox_ids:
        cmp_redacted = session.execute(
            update(CmpInboxItem)
            .where(CmpInboxItem.id.in_(sorted(inbox_ids)), CmpInboxItem.body != b"")
            .values(body=b"", headers={"redacted": "the subject was erased"}),
            execution_options={"synchronize_session": False},
        ).rowcount
    redacted = 0
    for merge in session.scalars(
        select(ProfileMerge).where(ProfileMerge.winner_id.in_(members) | ProfileMerge.loser_id.in_(members))
    ):
        details = dict(merge.details or {})
        secret_keys = [k for k in details if k.endswith("_encrypted")]
        if secret_keys or not details.get("erased"):
            for key in secret_keys:
                details.pop(key)
            details["erased"] = True
            merge.details = details
            redacted += 1 if secret_keys else 0
    consent_kept = session.scalar(
        select(func.count()).select_from(ConsentRecord).where(ConsentRecord.profile_id.in_(members))
    )
    session.flush()
    return ErasureSummary(
        profile_id=root,
        profiles=tuple(members),
        identities_removed=removed or 0,
        identifiers_suppressed=len(keys - already),
        traits_wiped=wiped,
        events_deleted=events_deleted or 0,
        events_scrubbed=events_scrubbed or 0,
        merges_redacted=redacted,
        consent_records_kept=consent_kept or 0,
        cmp_deliveries_redacted=cmp_redacted or 0,
    )


# ----------------------------------------------------------------------------------------------------------
# Reading a profile back (API, admin UI, export)
# ----------------------------------------------------------------------------------------------------------


def profile_traits(encryptor: FieldEncryptor, profile: Profile) -> dict[str, str]:
    """The decrypted traits of a profile ({} when none)."""
    return _traits(encryptor, profile)


def decrypt_or_marker(encryptor: FieldEncryptor, token: str | None) -> str | None:
    """Decrypt for display; a token that no configured key opens is shown as a marker, not an error page."""
    if token is None:
        return None
    try:
        return encryptor.decrypt(token)
    except DecryptionError:
        return "<cannot be decrypted with HUB_ENCRYPTION_KEY>"
