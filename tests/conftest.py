"""Shared fixtures: the package's own pytest plugin gives a throwaway, migrated PostgreSQL."""

pytest_plugins = ["persistence.testing.pytest_plugin", "pytester"]
