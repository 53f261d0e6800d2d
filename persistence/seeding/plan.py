"""What to seed (`SeedPlan`: sizes, seed, as_of) and what a run did (`SeedReport`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from persistence.seeding.catalog import FRAMEWORKS

__all__ = ["ProgressCallback", "SeedPlan", "SeedReport", "check_as_of", "utc_now"]

# progress(table, done, total), called after each batch.
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SeedPlan:
    """How much to seed. Sizes are per-entity counts; `seed` and `as_of` anchor the data."""

    seed: int = 42
    claims: int = 200
    verifications_per_claim: int = 3
    training_per_claim: int = 2
    checkpoints_per_model: int = 4  # versions per (model_name, framework)
    service_instances: int = 3  # per service
    ai_calls: int = 5000
    # Seed 004's events (each AI call also gets its cost event, not counted here).
    platform_events: int = 20_000
    agent_executions: int = 3_000
    cost_events: int = 1_500  # costs that are not AI calls: embeddings, storage, compute
    days: int = 30  # AI calls and events spread over this many days before as_of
    # None: the as_of recorded by the database's first seeding, else today 00:00 UTC.
    as_of: datetime | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name, high in _SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SeedPlan.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"SeedPlan.{name} must be >= 0, got {value}")
            if value > high:
                raise ValueError(f"SeedPlan.{name} must be <= {high}, got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"SeedPlan.seed must be an int, got {self.seed!r}")
        if self.days < 1:
            raise ValueError(f"SeedPlan.days must be >= 1 (timestamps are spread over it), got {self.days}")
        if self.as_of is not None:
            check_as_of(self.as_of, "SeedPlan.as_of")

    def resolved_as_of(self, now: Callable[[], datetime] | None = None) -> datetime:
        """`as_of` in UTC, or 00:00 UTC of the day `now()` (default: the wall clock) falls on."""
        if self.as_of is not None:
            return self.as_of.astimezone(UTC)
        today = check_as_of((now or utc_now)(), "now()")
        return today.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def sizes(self) -> dict[str, int]:
        """Every size of the plan (all fields but `seed` and `as_of`), by name."""
        return {name: getattr(self, name) for name in _SIZE_LIMITS}


# Upper bounds keep a run's memory and time sane (every row is generated in memory first) and the
# data realistic; the zero-padded natural keys (seed-claim-000000, seed-call-0000000) fit them.
_SIZE_LIMITS: dict[str, int] = {
    "claims": 100_000,
    "verifications_per_claim": len(FRAMEWORKS),  # one per framework; more would repeat a framework
    "training_per_claim": 10,
    "checkpoints_per_model": 99,
    "service_instances": 100,  # instance ids stay distinct up to here
    "ai_calls": 1_000_000,
    "platform_events": 5_000_000,
    "agent_executions": 1_000_000,
    "cost_events": 1_000_000,
    "days": 3650,
}
_EARLIEST_AS_OF = datetime(1980, 1, 1, tzinfo=UTC)
_LATEST_AS_OF = datetime(9000, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def check_as_of(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
    if not _EARLIEST_AS_OF <= value < _LATEST_AS_OF:
        raise ValueError(f"{what} must be in [1980-01-01, 9000-01-01), got {value.isoformat()}")
    return value


@dataclass(frozen=True)
class SeedReport:
    """Row counts per table before and after one seeding run, and the anchor it seeded with.

    `before` is taken inside the seeding transaction after the optional reset, so `inserted` is
    exactly what this run wrote.
    """

    before: dict[str, int]  # row counts per table before
    after: dict[str, int]  # row counts per table after
    seed: int  # the seed the database's data was made with
    as_of: datetime  # the as_of the database's data was anchored at (UTC)

    @property
    def inserted(self) -> dict[str, int]:
        return {name: self.after.get(name, 0) - self.before.get(name, 0) for name in self.after}
