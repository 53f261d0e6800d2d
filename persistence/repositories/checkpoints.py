"""Model checkpoints: versions of a model; at most one active per (model_name, framework)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from persistence.errors import NotFoundError
from persistence.models import ModelCheckpoint
from persistence.repository import Repository
from persistence.repository.coerce import mapping_argument, required
from persistence.repository.filters import lookup
from persistence.transaction import transaction


class CheckpointRepository(Repository[ModelCheckpoint]):
    model = ModelCheckpoint

    async def register(
        self,
        *,
        model_name: str,
        version: str,
        checkpoint_path: str,
        metrics: Mapping[str, Any],
        framework: str | None = None,
        training_config: Mapping[str, Any] | None = None,
    ) -> ModelCheckpoint:
        """Add an inactive checkpoint; a repeated (model_name, version) raises `ConflictError`."""
        return await self.add(
            model_name=model_name,
            version=version,
            checkpoint_path=checkpoint_path,
            metrics=mapping_argument(metrics, "metrics"),
            framework=framework,
            training_config=(
                mapping_argument(training_config, "training_config") if training_config is not None else None
            ),
        )

    async def activate(self, model_name: str, version: str) -> ModelCheckpoint:
        """Make `version` the one active checkpoint of its model and framework, atomically.

        Locks the model/framework's rows in id order first, so concurrent activations queue up
        instead of racing (and never deadlock); the partial unique index backs this up.
        """
        required(model_name, "model_name")
        required(version, "version")
        async with transaction():
            async with self.session() as session:
                target = await session.scalar(
                    select(ModelCheckpoint).where(
                        lookup(ModelCheckpoint, "model_name", model_name),
                        lookup(ModelCheckpoint, "version", version),
                    )
                )
                if target is None:
                    raise NotFoundError("ModelCheckpoint", f"{model_name}@{version}")
                same_group = (
                    ModelCheckpoint.model_name == model_name,
                    ModelCheckpoint.framework.is_not_distinct_from(target.framework),
                )
                # One lock order for everybody (ids ascending): activations queue, never deadlock.
                await session.execute(
                    select(ModelCheckpoint.id)
                    .where(*same_group)
                    .order_by(ModelCheckpoint.id)
                    .with_for_update()
                )
            await self.update_many(
                *same_group,
                ModelCheckpoint.is_active.is_(True),
                ModelCheckpoint.id != target.id,
                values={"is_active": False},
            )
            return await self.update(target.id, is_active=True)

    async def get_active(self, model_name: str, framework: str | None = None) -> ModelCheckpoint | None:
        found = await self.list(
            model_name=required(model_name, "model_name"),
            framework=framework,  # None: the checkpoints without a framework (IS NULL)
            is_active=True,
            limit=1,
        )
        return found[0] if found else None
