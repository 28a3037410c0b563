"""Loading a person's consent ledger from the database for the pure policy in ``hub.consent.policy``.

A merged person's ledger is the union of the ledgers of every profile in the cluster (the root and everything
merged into it): records are never moved on merge, so the evidence stays exactly as it was collected.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.consent.models import ConsentRecord
from hub.consent.policy import ConsentFact, ConsentLedger
from hub.profiles.services import canonical_profile_id, cluster_ids


def fact_from_record(record: ConsentRecord) -> ConsentFact:
    return ConsentFact(
        id=record.id,
        purpose=record.purpose,
        status=record.status,
        collected_at=record.collected_at,
        expires_at=record.expires_at,
        source=record.source,
    )


def load_ledger(session: Session, profile_id: str) -> ConsentLedger:
    """The consent ledger of the person ``profile_id`` belongs to (any id of a merged cluster works)."""
    root = canonical_profile_id(session, profile_id)
    ids = cluster_ids(session, root)
    records = session.scalars(select(ConsentRecord).where(ConsentRecord.profile_id.in_(ids)))
    return ConsentLedger(fact_from_record(r) for r in records)
