"""Rate-limiter state (the settings are `rate_limit_configs` in `models/limits.py`).

- `rate_limit_state`: one GCRA counter per (company, scope, subject, metric, period): `tat`, the
  theoretical arrival time, as exact epoch seconds (NUMERIC, so increments of `amount * period /
  limit` add up without rounding drift and exactly `burst` units fit in an empty bucket).
- `rate_limit_slots`: concurrency slots 0..limit-1 per (company, scope, subject); a slot is free
  when its lease has expired (`expires_at <= now`), so a crashed holder frees it without a sweep.
  `holder` is the fencing token: only the holder releases or renews.

Both are soft state: emptying them forgets who spent what in the current window, nothing else
(see `persistence.rate_limits` on durability). Company first in every key, no foreign keys yet.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Integer, Numeric, String, text
from sqlalchemy.orm import Mapped, mapped_column

from persistence.models.base import Base


class RateLimitState(Base):
    """The GCRA theoretical arrival time of one subject's counter for one metric and period."""

    __tablename__ = "rate_limit_state"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    scope: Mapped[str] = mapped_column(String(10), primary_key=True)
    subject: Mapped[str] = mapped_column(String(100), primary_key=True)
    metric: Mapped[str] = mapped_column(String(20), primary_key=True)
    period: Mapped[str] = mapped_column(String(10), primary_key=True)
    tat: Mapped[Decimal] = mapped_column(Numeric)

    __table_args__ = ({"postgresql_with": {"fillfactor": "50"}},)  # room for HOT updates


class RateLimitSlot(Base):
    """One concurrency slot of a subject: held by `holder` until `expires_at` (the lease)."""

    __tablename__ = "rate_limit_slots"

    company_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    scope: Mapped[str] = mapped_column(String(10), primary_key=True)
    subject: Mapped[str] = mapped_column(String(100), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[uuid.UUID | None]
    expires_at: Mapped[datetime] = mapped_column(server_default=text("'-infinity'"))

    __table_args__ = ({"postgresql_with": {"fillfactor": "50"}},)
