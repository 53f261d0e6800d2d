"""What a benchmark table states about where it ran: machine, load and versions (shared by the scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import asyncpg
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def environment(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        server = await conn.scalar(text("SHOW server_version"))
    return (
        f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}\n"
        f"- versions: Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"asyncpg {asyncpg.__version__}, PostgreSQL {server}"
    )
