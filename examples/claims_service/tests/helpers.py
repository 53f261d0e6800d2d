"""Small helpers shared by the tests."""

from __future__ import annotations

import uuid

import httpx

from persistence import Repository
from persistence.models import AICall

PROBLEM = "application/problem+json"


class AICalls(Repository[AICall]):
    """Reads of the AI-call ledger (written only through `AICallLogger`)."""

    model = AICall


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    """The RFC 9457 body of an error response, after checking its status and media type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    return body
