"""The refusals of the request lifecycle: typed conflicts that name the state the request is in."""

from __future__ import annotations

import uuid

from persistence.errors import ConflictError

__all__ = ["InvalidTransitionError", "LeaseLostError"]


class InvalidTransitionError(ConflictError):
    """The request is not in a state the transition starts from; nothing was changed.

    `current` is the state the request was found in after the refusal (read right after it)."""

    def __init__(self, request_id: uuid.UUID, transition: str, current: str, detail: str = "") -> None:
        self.request_id = request_id
        self.transition = transition
        self.current = current
        extra = f": {detail}" if detail else ""
        super().__init__(f"request {request_id} cannot {transition}: it is {current}{extra}")


class LeaseLostError(InvalidTransitionError):
    """A worker presented a lease that is no longer the request's: it expired, or the request was
    re-queued, reassigned or finished since. The late worker must drop its work (fencing)."""
