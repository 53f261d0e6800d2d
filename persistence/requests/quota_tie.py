"""`RequestQuotas`: the request lifecycle's quota tie (seed 001's "complete + quota update" in one
transaction). Pass it as `Requests(engine, hooks=RequestQuotas(quotas))`:

- **queued**: the request's estimate (`estimated_tokens`, and its price) is reserved against the
  user's and the company's quotas in the transaction that creates the request; a refusal raises
  `LimitExceeded` (a 429 in the FastAPI integration) and the request is not created.
- **finished**: in the transaction that finishes the request, a completed request settles its
  actual tokens (and their price); a failed one that reports tokens settles them (the work
  happened), otherwise it, like a cancelled or expired one, releases the reservation.

The reservation's id is the request's `reservation_id`, or its `request_id` when none was given,
so the tie needs no state of its own. A request created before the tie was installed has no
reservation: finishing it counts nothing rather than failing.

Under row-level security the transition's transaction already acts as the request's company; the
quota calls (`on=` that connection) set the same tenant again in a savepoint of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import asyncpg

from persistence.errors import InvalidRequestError, NotFoundError
from persistence.limits import LimitDecision, LimitExceeded
from persistence.quotas import Quotas, Reservation
from persistence.requests.types import RequestRecord

__all__ = ["Pricing", "RequestQuotas"]

Pricing = Callable[[str, int], Decimal]
"""(model_id, tokens) -> USD, for the cost quotas; without one, requests cost nothing."""


class RequestQuotas:
    """`RequestHooks` reserving a request's estimate when queued and settling it when finished."""

    def __init__(
        self, quotas: Quotas, *, lease: timedelta = timedelta(hours=1), price: Pricing | None = None
    ) -> None:
        if lease <= timedelta(0):
            raise InvalidRequestError("lease must be positive")
        self.quotas = quotas
        self.lease = lease
        self.price = price

    def _cost(self, model_id: str, tokens: int) -> Decimal:
        if self.price is None:
            return Decimal(0)
        cost = self.price(model_id, tokens)
        if not isinstance(cost, Decimal):
            raise InvalidRequestError("price() must return a Decimal")
        return cost

    @staticmethod
    def _reservation(record: RequestRecord) -> Reservation:
        reservation_id: uuid.UUID = record.reservation_id or record.request_id
        return Reservation(company_id=record.company_id, id=reservation_id, expires_at=record.updated_at)

    async def queued(self, raw: asyncpg.Connection, record: RequestRecord) -> None:
        tokens = record.estimated_tokens or 0
        admission = await self.quotas.admit(
            record.company_id,
            record.user_id,
            prompt_tokens=tokens,
            max_tokens=0,
            cost_usd=self._cost(record.model_id, tokens),
            lease=self.lease,
            reservation_id=record.reservation_id or record.request_id,
            on=raw,
        )
        if not admission.admitted:
            raise LimitExceeded(LimitDecision(None, "quota", admission, decided_at=record.created_at))

    async def finished(self, raw: asyncpg.Connection, record: RequestRecord) -> None:
        reservation = self._reservation(record)
        tokens = record.total_tokens
        if tokens is None and (record.prompt_tokens is not None or record.completion_tokens is not None):
            tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        try:
            if record.status == "completed" or (record.status == "failed" and tokens):
                used = tokens or 0
                await self.quotas.settle(
                    reservation, tokens=used, cost_usd=self._cost(record.model_id, used), on=raw
                )
            else:
                await self.quotas.release(reservation, on=raw)
        except NotFoundError:
            return  # created before the tie was installed: nothing was reserved
