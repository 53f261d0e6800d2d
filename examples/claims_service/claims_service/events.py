"""Domain events, published only once the data they describe is committed (`on_commit`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "claim.created", "claim.verified"
    key: str


class Outbox:
    """Stands in for a message broker: keeps what was published, in order."""

    def __init__(self) -> None:
        self.published: list[Event] = []

    def publish(self, event: Event) -> None:
        self.published.append(event)
