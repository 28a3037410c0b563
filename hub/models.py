"""Imports every model so the metadata (and Alembic's autogenerate) sees the whole schema."""

from hub.audit.models import AuditEntry
from hub.auth.models import ApiKey, User
from hub.cmp.models import CmpInboxItem, CmpSource
from hub.consent.models import ConsentRecord, ConsentState, Purpose
from hub.db import Base
from hub.delivery.models import DeliveryAttempt, Destination
from hub.events.models import Event
from hub.mappings.models import EventMapping, EventMappingVersion
from hub.profiles.models import Identity, Profile, ProfileMerge, SuppressedIdentifier
from hub.rules.models import RegionRule

__all__ = [
    "ApiKey",
    "AuditEntry",
    "Base",
    "CmpInboxItem",
    "CmpSource",
    "ConsentRecord",
    "ConsentState",
    "DeliveryAttempt",
    "Destination",
    "Event",
    "EventMapping",
    "EventMappingVersion",
    "Identity",
    "Profile",
    "ProfileMerge",
    "Purpose",
    "RegionRule",
    "SuppressedIdentifier",
    "User",
]
