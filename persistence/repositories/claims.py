"""Claims: created once per external id, found by it or by type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from persistence.errors import InvalidRequestError, NotFoundError
from persistence.models import Claim
from persistence.repository import Repository
from persistence.repository.coerce import mapping_argument, required


class ClaimRepository(Repository[Claim]):
    model = Claim

    async def create_claim(self, claim: Claim | Mapping[str, Any] | None = None, /, **fields: Any) -> Claim:
        """Insert a claim given as a model, a mapping, or keywords (`external_id`, `content`, ...).

        A second claim with the same `external_id` raises `ConflictError`.
        """
        values = _claim_values(claim, fields)
        return await self.add(**values)

    async def get_by_external_id(self, external_id: str) -> Claim:
        found = await self.list(external_id=required(external_id, "external_id"), limit=1)
        if not found:
            raise NotFoundError("Claim", external_id)
        return found[0]

    async def search_by_type(self, claim_type: str, *, limit: int = 100) -> list[Claim]:
        """Claims of one type, newest first."""
        return await self.list(claim_type=claim_type, order_by="-created_at", limit=limit)


def _claim_values(claim: Claim | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    if claim is None:
        values: dict[str, Any] = {}
    elif isinstance(claim, Claim):
        values = {
            key: getattr(claim, key)
            for key in ("id", "external_id", "content", "claim_type", "source", "metadata_", "created_at")
            if getattr(claim, key, None) is not None
        }
    else:
        values = _named(mapping_argument(claim, "claim"))
    values.update(_named(fields))  # keywords win over the claim's own values
    return values


def _named(values: Mapping[str, Any]) -> dict[str, Any]:
    """`metadata` (seed 003's column name) as the attribute `metadata_`; both at once is an error."""
    if "metadata" in values and "metadata_" in values:
        raise InvalidRequestError("Claim.metadata_ is given twice (also as 'metadata')")
    return {("metadata_" if key == "metadata" else key): value for key, value in values.items()}
