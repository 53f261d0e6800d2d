"""Deterministic generation: every seeded row as a pure function of (plan.seed, as_of, table, index).

Each row draws from its own `random.Random` (`row_rng`) and gets the primary key
`seed_uuid(table, index)`, so the same plan gives identical rows and a larger plan is a superset of
a smaller one. Nothing here touches the database (`write.py` does).
"""

from __future__ import annotations

import bisect
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from persistence.seeding.catalog import (
    CLAIM_TYPE_WEIGHTS,
    CLAIM_TYPES,
    FRAMEWORKS,
    SERVICES,
    checkpoint_version,
    claim_text,
    decide_consensus,
)
from persistence.seeding.plan import SeedPlan

__all__ = [
    "NAMESPACE",
    "SEED_USER",
    "Clock",
    "SeedClaim",
    "make_audit",
    "make_checkpoints",
    "make_claims",
    "make_consensus",
    "make_service_health",
    "make_training",
    "make_verifications",
    "row_rng",
    "seed_uuid",
]

# Fixed forever: changing it would re-key every seeded row.
NAMESPACE = uuid.UUID("6f1c3a52-8d0e-5b7a-9c44-2e1f0b7d9a11")

SEED_USER = "seed"  # user_id of the audit rows seeding writes


def seed_uuid(table: str, *index: int | str) -> uuid.UUID:
    """The primary key of seeded row `index` of `table`: depends on the index only, never on the seed."""
    return uuid.uuid5(NAMESPACE, ":".join([table, *map(str, index)]))


def row_rng(seed: int, table: str, *index: int | str) -> random.Random:
    # String seeds are hashed with SHA-512: stable across processes, unlike hash().
    return random.Random(":".join([str(seed), table, *map(str, index)]))


# How often each framework's verdict matches the truth; drives realistic disagreement.
_FRAMEWORK_ACCURACY = {
    "empirical": 0.86,
    "logical": 0.78,
    "statistical": 0.82,
    "consensus_ai": 0.9,
    "source_credibility": 0.74,
}
_FRAMEWORK_LATENCY_MS = {
    "empirical": (400, 4200),
    "logical": (120, 900),
    "statistical": (250, 2600),
    "consensus_ai": (900, 6500),
    "source_credibility": (150, 1800),
}

_SOURCES = (
    "twitter.com",
    "facebook.com",
    "reddit.com",
    "news-article",
    "press-release",
    "tv-broadcast",
    "user-submission",
    "browser-extension",
)
_SOURCE_WEIGHTS = (22, 12, 10, 20, 10, 6, 14, 6)
_EVIDENCE_DOMAINS = (
    "reuters.com",
    "apnews.com",
    "nature.com",
    "who.int",
    "nih.gov",
    "worldbank.org",
    "imf.org",
    "bbc.co.uk",
    "statista.com",
    "ourworldindata.org",
    "sec.gov",
    "ecb.europa.eu",
)

# Share of traffic by UTC hour: Europe's afternoon overlapping with US business hours.
_HOURLY = (
    0.30, 0.22, 0.18, 0.16, 0.17, 0.22, 0.35, 0.55, 0.75, 0.90, 0.95, 1.00,
    1.00, 1.05, 1.15, 1.20, 1.18, 1.10, 0.98, 0.85, 0.72, 0.60, 0.48, 0.38,
)  # fmt: skip
_WEEKEND = 0.45


class Clock:
    """Samples timestamps in [as_of - days, as_of) following a daily and hourly traffic shape."""

    def __init__(self, as_of: datetime, days: int) -> None:
        self.start = as_of - timedelta(days=days)
        self.end = as_of
        cum: list[float] = []
        total = 0.0
        for hour in range(days * 24):
            at = self.start + timedelta(hours=hour)
            weekend = _WEEKEND if at.weekday() >= 5 else 1.0
            growth = 1.0 + 0.01 * (hour // 24)  # traffic grows ~1% a day
            total += _HOURLY[at.hour] * weekend * growth
            cum.append(total)
        self._cum = cum
        self._total = total

    def sample(self, rng: random.Random) -> datetime:
        bucket = min(bisect.bisect_right(self._cum, rng.random() * self._total), len(self._cum) - 1)
        return self.start + timedelta(hours=bucket, microseconds=rng.randrange(3_600_000_000))


@dataclass(frozen=True)
class SeedClaim:
    index: int
    id: uuid.UUID
    external_id: str
    content: str
    claim_type: str
    created_at: datetime
    truth: bool
    framework_offset: int
    has_consensus: bool
    row: dict[str, Any]


def make_claims(plan: SeedPlan, clock: Clock) -> list[SeedClaim]:
    out = []
    for i in range(plan.claims):
        rng = row_rng(plan.seed, "claims", i)
        claim_type = rng.choices(CLAIM_TYPES, weights=CLAIM_TYPE_WEIGHTS)[0]
        content, topic = claim_text(rng, claim_type)
        created_at = clock.sample(rng)
        source = rng.choices(_SOURCES, weights=_SOURCE_WEIGHTS)[0]
        claim_id = seed_uuid("claims", i)
        external_id = f"seed-claim-{i:06d}"
        metadata = {
            "topic": topic,
            "language": "en",
            "priority": rng.choices(("low", "normal", "high"), weights=(25, 60, 15))[0],
            "submitted_by": f"user-{rng.randint(1, 400):04d}",
            "seeded": True,
        }
        out.append(
            SeedClaim(
                index=i,
                id=claim_id,
                external_id=external_id,
                content=content,
                claim_type=claim_type,
                created_at=created_at,
                truth=rng.random() < 0.55,
                framework_offset=rng.randrange(len(FRAMEWORKS)),
                has_consensus=rng.random() < 0.9,
                row={
                    "id": claim_id,
                    "external_id": external_id,
                    "content": content,
                    "claim_type": claim_type,
                    "source": source,
                    "metadata": metadata,
                    "created_at": created_at,
                },
            )
        )
    return out


def _evidence_urls(rng: random.Random, count: int) -> list[str]:
    return [
        f"https://www.{rng.choice(_EVIDENCE_DOMAINS)}/{rng.choice(('article', 'data', 'report', 'news'))}/"
        f"{rng.getrandbits(40):010x}"
        for _ in range(count)
    ]


def make_verifications(plan: SeedPlan, claims: Sequence[SeedClaim]) -> dict[int, list[dict[str, Any]]]:
    by_claim: dict[int, list[dict[str, Any]]] = {}
    for claim in claims:
        rows = []
        at = claim.created_at
        for j in range(plan.verifications_per_claim):
            rng = row_rng(plan.seed, "verification_results", claim.index, j)
            framework = FRAMEWORKS[(claim.framework_offset + j) % len(FRAMEWORKS)]
            correct = rng.random() < _FRAMEWORK_ACCURACY[framework]
            valid = claim.truth if correct else not claim.truth
            confidence = round(rng.uniform(0.62, 0.98) if correct else rng.uniform(0.5, 0.82), 4)
            low, high = _FRAMEWORK_LATENCY_MS[framework]
            processing_ms = rng.randint(low, high)
            at = at + timedelta(milliseconds=processing_ms + rng.randint(50, 3000))
            sources = _evidence_urls(rng, rng.randint(1, 4))
            supporting = sum(1 for _ in sources if rng.random() < (0.8 if valid else 0.2))
            rows.append(
                {
                    "id": seed_uuid("verification_results", claim.index, j),
                    "claim_id": claim.external_id,
                    "framework": framework,
                    "result": {
                        "valid": valid,
                        "verdict": "supported" if valid else "refuted",
                        "reasoning": f"{supporting} of {len(sources)} sources support the claim "
                        f"({framework.replace('_', ' ')} analysis).",
                    },
                    "confidence": confidence,
                    "evidence": {
                        "sources": sources,
                        "supporting": supporting,
                        "contradicting": len(sources) - supporting,
                    },
                    "processing_time_ms": processing_ms,
                    "model_version": f"1.{rng.randint(1, 3)}.{rng.randint(0, 4)}",
                    "created_at": at,
                    "updated_at": at,
                }
            )
        by_claim[claim.index] = rows
    return by_claim


def make_consensus(
    plan: SeedPlan, claims: Sequence[SeedClaim], verifications: dict[int, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    rows = []
    for claim in claims:
        votes = verifications[claim.index]
        if not claim.has_consensus or not votes:
            continue
        rng = row_rng(plan.seed, "consensus_decisions", claim.index)
        verdict = decide_consensus([(v["result"]["valid"], v["confidence"]) for v in votes])
        decision_ms = rng.randint(15, 400)
        rows.append(
            {
                "id": seed_uuid("consensus_decisions", claim.index),
                "claim_id": claim.external_id,
                "consensus_result": {
                    "valid": verdict.valid,
                    "verdict": "supported" if verdict.valid else "refuted",
                    "votes_for": verdict.votes_for,
                    "votes_against": verdict.votes_against,
                },
                "participating_frameworks": {
                    v["framework"]: {"valid": v["result"]["valid"], "confidence": v["confidence"]}
                    for v in votes
                },
                "consensus_type": verdict.consensus_type,
                "consensus_confidence": verdict.confidence,
                "decision_time_ms": decision_ms,
                "created_at": max(v["created_at"] for v in votes) + timedelta(milliseconds=decision_ms),
            }
        )
    return rows


def make_training(plan: SeedPlan, claims: Sequence[SeedClaim], as_of: datetime) -> list[dict[str, Any]]:
    rows = []
    for claim in claims:
        for j in range(plan.training_per_claim):
            rng = row_rng(plan.seed, "training_data", claim.index, j)
            framework = rng.choice(FRAMEWORKS)
            created_at = min(
                claim.created_at + timedelta(minutes=rng.randint(30, 72 * 60)), as_of - timedelta(seconds=1)
            )
            # Examples older than three days have usually been consumed by a weekly training batch.
            used = created_at < as_of - timedelta(days=3) and rng.random() < 0.6
            iso = created_at.isocalendar()
            label_source = rng.choices(("human_review", "consensus", "expert_panel"), weights=(50, 40, 10))[0]
            rows.append(
                {
                    "id": seed_uuid("training_data", claim.index, j),
                    "framework": framework,
                    "claim_id": claim.id,
                    "claim_text": claim.content,
                    "evidence": {
                        "sources": _evidence_urls(rng, rng.randint(1, 3)),
                        "label_source": label_source,
                    },
                    # Reviewers are right ~97% of the time.
                    "validity": claim.truth if rng.random() < 0.97 else not claim.truth,
                    "confidence": round(rng.uniform(0.7, 1.0), 4),
                    "metadata": {
                        "claim_type": claim.claim_type,
                        "annotator": f"annotator-{rng.randint(1, 24):02d}",
                        "split": rng.choices(("train", "validation", "test"), weights=(80, 10, 10))[0],
                    },
                    "used_in_training": used,
                    "training_batch_id": f"tb-{framework}-{iso.year}w{iso.week:02d}" if used else None,
                    "created_at": created_at,
                }
            )
    return rows


_CHECKPOINT_MODELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("claim-verifier", FRAMEWORKS, "microsoft/deberta-v3-large"),
    ("evidence-ranker", ("empirical", "statistical", "source_credibility"), "BAAI/bge-reranker-large"),
    ("consensus-calibrator", ("consensus_ai",), "xgboost"),
)


def make_checkpoints(
    plan: SeedPlan, as_of: datetime, already_active: set[tuple[str, str | None]]
) -> list[dict[str, Any]]:
    rows = []
    pair = 0
    for model_name, frameworks, base_model in _CHECKPOINT_MODELS:
        for framework in frameworks:
            last = plan.checkpoints_per_model - 1
            for v in range(plan.checkpoints_per_model):
                rng = row_rng(plan.seed, "model_checkpoints", pair, v)
                version = checkpoint_version(v, framework)
                accuracy = min(0.97, 0.76 + 0.025 * v + rng.uniform(-0.01, 0.015))
                precision = min(0.98, accuracy + rng.uniform(-0.03, 0.03))
                recall = min(0.98, accuracy + rng.uniform(-0.04, 0.02))
                rows.append(
                    {
                        "id": seed_uuid("model_checkpoints", pair, v),
                        "model_name": model_name,
                        "framework": framework,
                        "version": version,
                        "checkpoint_path": f"s3://brahminykite-models/{model_name}/{framework}/{version}/model.safetensors",
                        "metrics": {
                            "accuracy": round(accuracy, 4),
                            "precision": round(precision, 4),
                            "recall": round(recall, 4),
                            "f1": round(2 * precision * recall / (precision + recall), 4),
                            "eval_loss": round(0.62 - 0.04 * v + rng.uniform(-0.02, 0.02), 4),
                            "eval_samples": rng.randint(2_000, 12_000),
                        },
                        "training_config": {
                            "base_model": base_model,
                            "learning_rate": rng.choice((1e-5, 2e-5, 3e-5)),
                            "epochs": rng.randint(2, 5),
                            "batch_size": rng.choice((16, 32, 64)),
                            "warmup_ratio": 0.1,
                        },
                        # The newest version is live, unless this pair already has a live checkpoint.
                        "is_active": v == last and (model_name, framework) not in already_active,
                        "created_at": as_of - timedelta(days=7 * (last - v) + 2, minutes=rng.randint(0, 600)),
                    }
                )
            pair += 1
    return rows


def make_service_health(plan: SeedPlan, as_of: datetime) -> list[dict[str, Any]]:
    rows = []
    for s, service in enumerate(SERVICES):
        # One Kubernetes ReplicaSet per service: the pod-template hash is shared by its pods.
        template_hash = seed_uuid("service_health", service).hex[:10]
        for k in range(plan.service_instances):
            rng = row_rng(plan.seed, "service_health", s, k)
            key = seed_uuid("service_health", s, k)
            status = rng.choices(("healthy", "degraded", "starting"), weights=(85, 10, 5))[0]
            lag = rng.randint(1, 30) if status != "degraded" else rng.randint(45, 300)
            uptime = rng.randint(60, 14 * 86_400) if status != "starting" else rng.randint(1, 40)
            rows.append(
                {
                    "id": key,
                    "service_name": service,
                    "instance_id": f"{service}-{template_hash}-{key.hex[:5]}",
                    "status": status,
                    "last_heartbeat": as_of - timedelta(seconds=lag),
                    "metadata": {
                        "version": f"2.{rng.randint(10, 14)}.{rng.randint(0, 9)}",
                        "host": f"ip-10-0-{rng.randint(0, 15)}-{rng.randint(2, 254)}.ec2.internal",
                        "region": rng.choice(("us-east-1", "eu-west-1")),
                        "pid": rng.randint(1, 64),
                        "uptime_seconds": uptime,
                        "cpu_percent": round(rng.uniform(3, 85), 1),
                        "memory_mb": rng.randint(180, 3800),
                    },
                    "created_at": as_of - timedelta(seconds=uptime),
                }
            )
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def make_audit(
    seed: int,
    claims: Sequence[SeedClaim],
    verifications: dict[int, list[dict[str, Any]]],
    consensus: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    def entry(
        key: str, entity_type: str, entity_id: str, row: dict[str, Any], fields: Sequence[str]
    ) -> dict[str, Any]:
        return {
            "id": seed_uuid("audit_log", key),
            "entity_type": entity_type,
            "entity_id": entity_id,
            "action": "insert",
            "user_id": SEED_USER,
            "changes": {name: [None, _jsonable(row[name])] for name in fields},
            "metadata": {"source": "seed", "seed": seed, "request_id": f"seed-req-{key}"},
            "created_at": row["created_at"],
        }

    rows = []
    for claim in claims:
        rows.append(
            entry(
                f"claim:{claim.index}",
                "claim",
                claim.external_id,
                claim.row,
                ("external_id", "content", "claim_type", "source"),
            )
        )
        for j, v in enumerate(verifications[claim.index]):
            rows.append(
                entry(
                    f"verification:{claim.index}:{j}",
                    "verification_result",
                    str(v["id"]),
                    v,
                    ("claim_id", "framework", "result", "confidence"),
                )
            )
    for c in consensus:
        rows.append(
            entry(
                f"consensus:{c['claim_id']}",
                "consensus_decision",
                str(c["id"]),
                c,
                ("claim_id", "consensus_result", "consensus_type", "consensus_confidence"),
            )
        )
    return rows
