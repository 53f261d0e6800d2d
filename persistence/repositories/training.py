"""Training data: examples added in bulk, consumed per framework in training batches."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from persistence.models import TrainingData
from persistence.repository import Repository
from persistence.repository.coerce import refuse, required


class TrainingDataRepository(Repository[TrainingData]):
    model = TrainingData

    async def add_examples(self, examples: Sequence[Mapping[str, Any]]) -> int:
        """Bulk insert (one statement per chunk, audited); returns how many were added."""
        if isinstance(examples, Mapping | str | bytes) or not isinstance(examples, Iterable):
            raise refuse("examples", f"expects a list of mappings, got {type(examples).__name__}")
        return await self.add_many(examples)  # `metadata` is accepted for `metadata_` by every write

    async def unused_for_framework(self, framework: str, *, limit: int = 1000) -> list[TrainingData]:
        """The oldest examples of `framework` not yet used in training (served by a partial index)."""
        return await self.list(
            framework=required(framework, "framework"),
            used_in_training=False,
            order_by="created_at",
            limit=limit,
        )

    async def mark_used_in_batch(self, ids: Sequence[uuid.UUID], batch_id: str) -> int:
        """Mark examples as used by `batch_id`; examples already used by a batch are left alone.

        Returns how many were marked, so a caller can tell if another trainer took some first.
        """
        if isinstance(ids, str | bytes | Mapping) or not isinstance(ids, Iterable):
            raise refuse("ids", f"expects a list of TrainingData ids, got {type(ids).__name__}")
        required(batch_id, "batch_id")
        ids = list(ids)
        if not ids:
            return 0
        return await self.update_many(
            id__in=ids,
            used_in_training=False,
            values={"used_in_training": True, "training_batch_id": batch_id},
        )
