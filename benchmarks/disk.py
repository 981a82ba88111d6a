"""Disk growth of the scoring log and velocity store under a long soak, with and without retention.

Drives the service's own ``Scorer`` in process (the identity layer, the SQLite velocity store and
scoring log, the rules; no model and no online store, which hold no per-request state) through
``--requests`` attempts while a simulated clock crosses ``--days`` days, twice: once never pruning,
once running the maintenance (``Records.prune`` and ``SqliteVelocity.prune`` with the settings'
retention) every ``--every`` requests. Prints one table: at each tenth of the run, the simulated day,
the files' size and their growth per 1,000 requests since the previous row, for both runs.
Usage: ``python benchmarks/disk.py [--requests 20000] [--days 240] [--every 1000]``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from config.resolver import identity_resolver
from features.velocity import SqliteVelocity
from promoguard.settings import Settings
from scoring.records import Records
from scoring.rules import default_rules
from scoring.schemas import OutcomeRequest, ScoreRequest
from scoring.scorer import Scorer, ScorerConfig

START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
PROMOS = [
    {"code": "WELCOME10", "type": "welcome", "per_customer_limit": 1},
    {"code": "SPRING", "type": "sitewide"},
    {"code": "SAMPLE", "type": "free_sample", "per_customer_limit": 1},
    {"code": "FRIEND5", "type": "referral"},
]


class _Clock:
    """The simulated time the scorer reads (epoch seconds)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def request(i: int, rng: random.Random, shoppers: int) -> ScoreRequest:
    """One attempt by a shopper from a fixed population (so counters are shared and revisited)."""
    s = rng.randrange(shoppers)
    promo = rng.choice(PROMOS)
    return ScoreRequest.model_validate({
        "request_id": f"soak-{i}",
        "promotion": promo,
        "account": {"account_id": f"acct-{s}", "is_guest": False},
        "email": f"shopper{s}@example.com",
        "device": {"device_id": f"dev-{s % (shoppers // 2)}"},
        "payment": {"fingerprint": f"fp-{s}"},
        "ip": f"198.51.{s % 200}.{s % 250 + 1}",
        "cart": {"total": 50.0, "currency": "USD"},
    })


def size_mb(folder: Path) -> float:
    """Megabytes of the databases and their write-ahead logs."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6


def soak(
    args: argparse.Namespace, settings: Settings, folder: Path, maintain: bool
) -> list[tuple[int, float, float]]:
    """Run the attempts; returns ``(requests, simulated day, MB)`` at each tenth of the run."""
    folder.mkdir(parents=True)
    clock = _Clock()
    velocity = SqliteVelocity(folder / "velocity.db", retention_s=settings.velocity_retention_days * 86_400)
    records = Records(folder / "scores.db")
    scorer = Scorer(identity_resolver(settings), None, velocity, None, default_rules(), records,
                    ScorerConfig(feature_deadline_ms=5000.0, request_deadline_ms=10_000.0), clock=clock)
    rng = random.Random(7)
    step = args.days * 86_400 / args.requests
    marks: list[tuple[int, float, float]] = []
    try:
        for i in range(1, args.requests + 1):
            clock.now = START + i * step
            answer: Any = scorer.score(request(i, rng, args.shoppers))
            if rng.random() < 0.3:
                outcome = rng.choice(["redeemed", "abandoned"])
                told = {"request_id": answer.request_id, "outcome": outcome}
                scorer.outcome(OutcomeRequest.model_validate(told))
            if maintain and i % args.every == 0:
                when = datetime.fromtimestamp(clock.now, UTC)
                records.prune(when, settings.scores_retention_days)
                velocity.prune(clock.now)
            if i % (args.requests // 10) == 0:
                marks.append((i, (clock.now - START) / 86_400, size_mb(folder)))
    finally:
        scorer.close()
    return marks


def main() -> None:
    """Parse the options, soak both ways in a temporary folder and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=240.0, help="simulated days the run spans")
    parser.add_argument("--every", type=int, default=1000, help="requests between maintenance runs")
    parser.add_argument("--shoppers", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pg-disk-") as tmp:
        settings = Settings.from_env(root=Path(tmp))
        without = soak(args, settings, Path(tmp) / "without", maintain=False)
        with_ = soak(args, settings, Path(tmp) / "with", maintain=True)
    rows = []
    previous = (0, 0.0, 0.0)
    for (n, day, mb_off), (_, _, mb_on) in zip(without, with_, strict=True):
        per_k = 1000 / (n - previous[0])
        rows.append({
            "requests": n, "day": round(day), "MB no maintenance": round(mb_off, 2),
            "MB maintenance": round(mb_on, 2),
            "KB/1k req no maintenance": round((mb_off - previous[1]) * 1000 * per_k),
            "KB/1k req maintenance": round((mb_on - previous[2]) * 1000 * per_k),
        })
        previous = (n, mb_off, mb_on)
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"retention: scoring log {settings.scores_retention_days:g} days, "
          f"velocity {settings.velocity_retention_days:g} days; maintenance every {args.every} requests")


if __name__ == "__main__":
    main()
