"""A sink that keeps every event, for assertions."""

from __future__ import annotations

from dataclasses import dataclass, field

from persistence.observe import PoolEvent, QueryEvent, TransactionEvent, TransactionStart


@dataclass
class Recorder:
    queries: list[QueryEvent] = field(default_factory=list)
    pool: list[PoolEvent] = field(default_factory=list)
    starts: list[TransactionStart] = field(default_factory=list)
    transactions: list[TransactionEvent] = field(default_factory=list)

    def on_query(self, event: QueryEvent) -> None:
        self.queries.append(event)

    def on_pool(self, event: PoolEvent) -> None:
        self.pool.append(event)

    def on_transaction_start(self, event: TransactionStart) -> None:
        self.starts.append(event)

    def on_transaction(self, event: TransactionEvent) -> None:
        self.transactions.append(event)

    def clear(self) -> None:
        for events in (self.queries, self.pool, self.starts, self.transactions):
            events.clear()
