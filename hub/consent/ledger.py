"""Loading a person's consent ledger from the database for the pure policy in ``hub.consent.policy``.

A merged person's ledger is the union of the ledgers of every profile in the cluster (the root and everything
merged into it): records are never moved on merge, so the evidence stays exactly as it was collected. What a merge
means for consent (DESIGN §4.2: the most restrictive recent decision wins) is written into the ledger once, at
merge time, as ``source="merge"`` denials (``hub.consent.services.record_merge_denials``), so reading is a plain
union and a decision the person makes after the merge wins whichever profile it is recorded on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Select, String, bindparam, func, select
from sqlalchemy.orm import Session, aliased

from hub.consent.models import ConsentRecord
from hub.consent.policy import ConsentFact, ConsentLedger
from hub.profiles.models import Profile
from hub.profiles.services import ProfileNotFound, canonical_profile_id, cluster_ids


def fact_from_record(record: ConsentRecord | Any) -> ConsentFact:
    """A ledger fact from a ``ConsentRecord`` or from any row selecting its columns by the same names."""
    return ConsentFact(
        id=record.id,
        purpose=record.purpose,
        status=record.status,
        collected_at=record.collected_at,
        expires_at=record.expires_at,
        source=record.source,
    )


def combine_cluster(members: Sequence[Iterable[ConsentFact]]) -> ConsentLedger:
    """One ledger for a cluster from each member profile's facts: their union (merge denials are stored rows)."""
    return ConsentLedger(fact for facts in members for fact in facts)


def load_ledger(session: Session, profile_id: str, purpose: str | None = None) -> ConsentLedger:
    """The consent ledger of the person ``profile_id`` belongs to (any id of a merged cluster works).

    With ``purpose`` only that purpose's facts are read; the result answers every question about ``purpose``
    exactly as the whole ledger would.
    Raises ProfileNotFound.
    """
    statement, parameters = cluster_records_query(profile_id, purpose)
    rows = session.execute(statement, parameters).all()
    if not rows:
        raise ProfileNotFound(profile_id)
    root = rows[0].root_id
    if any(row.member_id == root and row.member_merged_into_id is not None for row in rows):
        return _load_ledger_walking(session, profile_id, purpose)  # a chain that was not flattened
    return ConsentLedger(fact_from_record(row) for row in rows if row.id is not None)


def _cluster_records_statement(*, one_purpose: bool) -> Select[Any]:
    """One statement for the whole read: the root (merges are flattened, so one hop at most), every member
    (the root, or merged into it; both columns are indexed) and their records, left-joined so that the root's
    row also proves the profile exists. Records come through ``ix_consent_records_profile_purpose_time``.
    Parameters: ``profile_id`` (and ``purpose``)."""
    root = (
        select(func.coalesce(Profile.merged_into_id, Profile.id))
        .where(Profile.id == bindparam("profile_id", type_=String))
        .scalar_subquery()
    )
    member = aliased(Profile, name="member")
    on = ConsentRecord.profile_id == member.id
    if one_purpose:
        on = on & (ConsentRecord.purpose == bindparam("purpose", type_=String))
    return (
        select(
            root.label("root_id"),
            member.id.label("member_id"),
            member.merged_into_id.label("member_merged_into_id"),
            member.created_at.label("member_created_at"),
            ConsentRecord.id,
            ConsentRecord.purpose,
            ConsentRecord.status,
            ConsentRecord.collected_at,
            ConsentRecord.expires_at,
            ConsentRecord.source,
        )
        .select_from(member)
        .outerjoin(ConsentRecord, on)
        .where((member.id == root) | (member.merged_into_id == root))
    )


# Built once: constructing the statement (an alias, a subquery) costs more Python than running it.
_CLUSTER_RECORDS = _cluster_records_statement(one_purpose=False)
_CLUSTER_RECORDS_FOR_PURPOSE = _cluster_records_statement(one_purpose=True)


def cluster_records_query(profile_id: str, purpose: str | None) -> tuple[Select[Any], dict[str, str]]:
    """The statement ``load_ledger`` runs and its parameters (for EXPLAIN in the benchmark)."""
    if purpose is None:
        return _CLUSTER_RECORDS, {"profile_id": profile_id}
    return _CLUSTER_RECORDS_FOR_PURPOSE, {"profile_id": profile_id, "purpose": purpose}


def _load_ledger_walking(session: Session, profile_id: str, purpose: str | None) -> ConsentLedger:
    """The step-by-step read, for a merge chain longer than one hop (``canonical_profile_id`` follows it)."""
    root = canonical_profile_id(session, profile_id)
    ids = cluster_ids(session, root)
    query = select(
        ConsentRecord.id,
        ConsentRecord.profile_id,
        ConsentRecord.purpose,
        ConsentRecord.status,
        ConsentRecord.collected_at,
        ConsentRecord.expires_at,
        ConsentRecord.source,
    ).where(ConsentRecord.profile_id.in_(ids))
    if purpose is not None:
        query = query.where(ConsentRecord.purpose == purpose)
    return ConsentLedger(fact_from_record(row) for row in session.execute(query))
