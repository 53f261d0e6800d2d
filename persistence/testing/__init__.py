"""Test support for users of `persistence`: a throwaway migrated PostgreSQL and factory-boy factories.

Enable the fixtures in a test suite with `pytest_plugins = ["persistence.testing.pytest_plugin"]`.
"""

from persistence.testing.database import ThrowawayPostgres

__all__ = ["ThrowawayPostgres"]
