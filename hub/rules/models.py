"""Per-region forwarding rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, created_at, intpk, utcnow


class RegionRule(Base):
    __tablename__ = "region_rules"
    __table_args__ = (
        CheckConstraint("mode IN ('opt_in', 'opt_out', 'block')", name="mode"),
        CheckConstraint("ldu IN ('never', 'on_opt_out', 'always')", name="ldu"),
    )

    id: Mapped[intpk]
    region: Mapped[str] = mapped_column(String(16), unique=True)
    mode: Mapped[str] = mapped_column(String(16))
    required_purposes: Mapped[list[Any]]
    opt_out_purposes: Mapped[list[Any]]
    ldu: Mapped[str] = mapped_column(String(16), default="never")
    identifiers: Mapped[list[Any] | None]
    destination_id: Mapped[int | None] = mapped_column(ForeignKey("destinations.id"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
