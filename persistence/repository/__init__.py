"""The generic typed repository: `class ClaimRepository(Repository[Claim]): model = Claim`."""

from persistence.repository.base import ModelT, RepositoryBase
from persistence.repository.filters import Filter
from persistence.repository.reads import Page, Reads
from persistence.repository.writes import Writes


class Repository(Reads[ModelT], Writes[ModelT]):
    """Typed async access to one model: reads, writes (audited), upserts, keyset pages, streams."""


__all__ = ["Filter", "ModelT", "Page", "Repository", "RepositoryBase"]
