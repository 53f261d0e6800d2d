"""persistence: typed async PostgreSQL persistence for AI platform services.

This module is the public API; everything else may change without notice.
"""

from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer, ServerStatus
from persistence.engine import create_database_engine
from persistence.errors import (
    ConfigurationError,
    DatabaseConnectionError,
    EmbeddedServerError,
    PersistenceError,
)

__all__ = [
    "ConfigurationError",
    "DatabaseConfig",
    "DatabaseConnectionError",
    "EmbeddedConfig",
    "EmbeddedServer",
    "EmbeddedServerError",
    "PersistenceError",
    "ServerStatus",
    "create_database_engine",
]
__version__ = "0.1.0"
