"""Alembic environment of the package's own migrations: see `persistence.migration_env` (a service's
env.py is the same one call with its own metadata)."""

from persistence.migration_env import run_migrations
from persistence.models import Base

run_migrations(Base.metadata)
