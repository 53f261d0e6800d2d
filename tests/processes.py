"""Running the package's scripts and CLI as a user would: a child Python process in the repo root."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(
    argv: Sequence[str],
    *,
    database_url: str,
    strip: tuple[str, ...] = ("DB_",),
    extra: Mapping[str, str] | None = None,
    timeout: float = 120,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python <argv>` against `database_url`; variables starting with `strip` are dropped from
    the environment first, so the developer's own settings cannot leak into the run. `stdin`, when
    given, is piped in (so the child's stdin is not a terminal)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(strip)}
    env["DATABASE_URL"] = database_url
    env.update(extra or {})
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )
