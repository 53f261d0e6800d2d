"""A throwaway PostgreSQL for a test session: started once, migrated once, cloned for tests that commit."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence import migrations
from persistence.config import DatabaseConfig, EmbeddedConfig
from persistence.embedded import EmbeddedServer
from persistence.engine import build_engine
from persistence.errors import EmbeddedServerError

TEMPLATE_DB = "persistence_template"
TEST_DB = "persistence_test"

# Durability is pointless for a server that lives for one test session, and costs most of its time.
_FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens on it on 127.0.0.1, else a free port chosen by the kernel."""
    candidates = ([preferred] if preferred else []) + [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1")


class ThrowawayPostgres:
    """One server in a temporary directory, listening on a unix socket and on 127.0.0.1:`port`."""

    def __init__(
        self,
        *,
        port: int | None = None,
        bindir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="pgt-", dir="/tmp"))
        config = EmbeddedConfig()
        self._bindir = bindir or config.pg_bindir
        self._root_method = config.root_method  # PERSISTENCE_ROOT_METHOD: how the server leaves root
        # e.g. {"synchronous_commit": "on"} for a test that crashes the server and counts committed rows
        self._settings = {**_FAST_SETTINGS, **(settings or {})}
        self._fixed_port = port is not None
        self.port = port or free_port(5432)
        self.server = self._server(self.port)
        self._clones = itertools.count(1)

    def _server(self, port: int) -> EmbeddedServer:
        return EmbeddedServer(
            self._dir,
            port=port,
            bindir=self._bindir,
            listen_address="127.0.0.1",
            settings=self._settings,
            root_method=self._root_method,
        )

    def start(self) -> None:
        try:
            self.server.start()
        except EmbeddedServerError:
            if self._fixed_port:
                raise
            # Another test session took the port between our probe and the server's bind.
            self.port = free_port()
            self.server = self._server(self.port)
            self.server.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop(mode="immediate")
        shutil.rmtree(self._dir, ignore_errors=True)

    def stop_server(self, mode: str = "immediate") -> None:
        """Stop the server but keep its data ("immediate" is a crash: no checkpoint, recovery on start)."""
        self.server.stop(mode=mode)

    def start_server(self) -> None:
        """Start the stopped server again; returns once it accepts connections (after crash recovery)."""
        self.server.start()

    def config(self, database: str, **overrides: object) -> DatabaseConfig:
        """Settings for `database` over the unix socket as the superuser; env variables are ignored."""
        fields: dict[str, object] = {
            "host": str(self.server.socket_dir),
            "port": self.port,
            "user": self.server.superuser,
            "database": database,
            "pool_size": 5,
            "max_overflow": 10,
            **overrides,
        }
        return DatabaseConfig.model_validate(fields)

    async def create_migrated_template(self, alembic_config: migrations.ServiceConfig | None = None) -> None:
        """Create the template database and migrate it to head (once per session); `alembic_config`:
        a service's alembic.ini, whose revisions run too (`persistence.migrations`)."""
        self.server.drop_database(TEMPLATE_DB)
        self.server.ensure_database(TEMPLATE_DB)
        engine = build_engine(self.config(TEMPLATE_DB), pooled=False)
        try:
            await migrations.upgrade(engine, service=alembic_config)
        finally:
            await engine.dispose()
        # Nobody may stay connected to a template while it is cloned.
        self.server.psql(
            "SELECT format('ALTER DATABASE %I WITH ALLOW_CONNECTIONS false', :'name') \\gexec\n",
            variables={"name": TEMPLATE_DB},
        )

    def clone(self, name: str | None = None) -> str:
        """A new database copied from the migrated template (40-400 ms); returns its name."""
        name = name or f"persistence_clone_{next(self._clones)}"
        self.server.drop_database(name)
        self.server.psql(
            "SELECT format('CREATE DATABASE %I TEMPLATE %I', :'name', :'template') \\gexec\n",
            variables={"name": name, "template": TEMPLATE_DB},
        )
        return name

    def drop(self, name: str) -> None:
        self.server.drop_database(name)

    def create_role(self, name: str, password: str, *, database: str | None = None) -> None:
        """A login role with a password (for TCP/scram tests), and optionally a database it owns."""
        if database is not None:
            self.server.drop_database(database)
        script = (
            "SELECT format('DROP ROLE IF EXISTS %I', :'role') \\gexec\n"
            "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password') \\gexec\n"
        )
        if database is not None:
            script += "SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') \\gexec\n"
        self.server.psql(script, variables={"role": name, "password": password, "db": database or ""})

    def empty_database(self, name: str) -> str:
        """A new database with no schema at all (for migration tests)."""
        self.server.drop_database(name)
        self.server.ensure_database(name)
        return name

    async def execute(self, engine: AsyncEngine, sql: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
