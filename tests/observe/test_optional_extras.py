"""The library imports and works without prometheus-client and OpenTelemetry installed."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
for name in ("prometheus_client", "opentelemetry"):
    sys.modules[name] = None  # makes `import name` raise ImportError, as if not installed
import persistence, persistence.monitoring, persistence.observe, persistence.engine, persistence.cli
from persistence.monitoring import DatabaseMetrics
DatabaseMetrics().record_query_duration("q", 0.1)
for extra in ("persistence.observe.prometheus", "persistence.observe.otel"):
    try:
        __import__(extra)
    except ImportError:
        print("missing", extra)
"""


def test_imports_without_the_optional_extras() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [
        "missing persistence.observe.prometheus",
        "missing persistence.observe.otel",
    ]
