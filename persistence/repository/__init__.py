"""The generic typed repository: `class ClaimRepository(Repository[Claim]): model = Claim`."""

from persistence.repository.base import MappedModel, ModelT, RepositoryBase
from persistence.repository.filters import Filter
from persistence.repository.loading import Load
from persistence.repository.reads import Page, Reads
from persistence.repository.writes import Writes


class Repository(Reads[ModelT], Writes[ModelT]):
    """Typed async access to one model: reads, writes (audited), upserts, keyset pages, streams."""


__all__ = ["Filter", "Load", "MappedModel", "ModelT", "Page", "Repository", "RepositoryBase"]
