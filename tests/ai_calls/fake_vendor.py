"""A fake metering vendor on 127.0.0.1: the same `/v1/usage` API the real adapter calls (stdlib server).

The test sets `usage` (the JSON body, Decimals kept exact) and may make the next requests fail.
Requests are recorded (path, query, Authorization header) so tests can check what was sent.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_KEY = "test-metering-key-5f1c"


_MARK = "\u0000decimal:"


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return _MARK + str(value)
    raise TypeError(type(value).__name__)


def dumps(value: object) -> str:
    """JSON with Decimals as exact numbers (all digits), as a vendor's serializer would write them."""
    text = json.dumps(value, default=_default)
    return re.sub(r'"\\u0000decimal:([^"]*)"', r"\1", text)


@dataclass
class FakeVendor:
    usage: dict[str, Any] = field(default_factory=dict)
    fail_next: int = 0
    fail_status: int = 503
    api_key: str = API_KEY
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


def _handler(vendor: FakeVendor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            vendor.requests.append(
                {
                    "path": parts.path,
                    "query": {k: v[0] for k, v in parse_qs(parts.query).items()},
                    "authorization": self.headers.get("Authorization"),
                }
            )
            if parts.path != "/v1/usage":
                self._send(404, '{"error": "not found"}')
            elif self.headers.get("Authorization") != f"Bearer {vendor.api_key}":
                self._send(401, '{"error": "unauthorized"}')
            elif vendor.fail_next > 0:
                vendor.fail_next -= 1
                self._send(vendor.fail_status, '{"error": "try again"}')
            else:
                self._send(200, dumps(vendor.usage))

    return Handler


@contextmanager
def fake_vendor() -> Iterator[FakeVendor]:
    vendor = FakeVendor()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(vendor))
    vendor.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield vendor
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
