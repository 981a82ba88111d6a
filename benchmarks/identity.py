"""Identity resolution cost: one checkout identity (cold and warm parse caches) and a whole frame.

Prints one table: p50/p99 of ``IdentityResolver.resolve`` for one full identity (email, phone, shipping
and billing address, device, IP, local IP, offline IP intelligence) on never-seen values (cold caches)
and on repeated values (warm caches), the address parser's share of the cold cost, and
``resolve_frame`` throughput on synthetic rows. Budget: p99 < 0.5 ms for one identity.

Run: ``python -m benchmarks.identity [--rows 100000] [--samples 3000]``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from features.identity import (
    IdentityConfig,
    IdentityResolver,
    address_cache_info,
    clear_caches,
    normalize_address,
    resolve_frame,
)
from features.ipintel import OfflineIpIntel

_STREETS = ["Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park", "Sunset"]
_SUFFIXES = ["St", "Street", "Ave", "Avenue", "Rd", "Blvd", "Ln", "Dr", ""]
_UNITS = [None, "Apt 4B", "#12", "Unit 3-C", "Suite 200"]
_DOMAINS = ["gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "icloud.com", "example.org"]


def _identity(r: random.Random, i: int) -> dict[str, Any]:
    street = f"{r.randrange(1, 9999)} {r.choice(_STREETS)} {r.choice(_SUFFIXES)}".strip()
    zip5 = f"{r.randrange(10000, 99999)}"
    unit = r.choice(_UNITS)
    same_bill = r.random() < 0.7
    bill_street = street if same_bill else f"{r.randrange(1, 9999)} {r.choice(_STREETS)} St"
    return {
        "request_id": f"req-{i}",
        "email": f"user.{i}{'+promo' if r.random() < 0.2 else ''}@{r.choice(_DOMAINS)}",
        "phone": f"({r.randrange(201, 989)}) {r.randrange(200, 999)}-{r.randrange(0, 9999):04d}",
        "ship_line1": street, "ship_line2": unit, "ship_city": "Springfield", "ship_region": "IL",
        "ship_postal_code": zip5, "ship_country": "US",
        "bill_line1": bill_street, "bill_line2": unit if same_bill else None, "bill_city": "Springfield",
        "bill_region": "IL", "bill_postal_code": zip5, "bill_country": "US",
        "payment_fingerprint": f"fp_{r.getrandbits(64):016x}",
        "device_id": f"{r.getrandbits(128):032x}",
        "ip": f"{r.randrange(1, 223)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}",
        "local_ip": f"192.168.{r.randrange(256)}.{r.randrange(2, 254)}",
        "account_id": f"acct_{i:08d}", "referrer_account_id": None, "is_guest": False,
    }


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def _time_each(records: list[dict[str, Any]], fn: Callable[[dict[str, Any]], object]) -> list[float]:
    out = []
    for record in records:
        start = time.perf_counter()
        fn(record)
        out.append(time.perf_counter() - start)
    return out


def _addresses(record: dict[str, Any]) -> None:
    normalize_address(record["ship_line1"], record["ship_line2"], record["ship_city"], record["ship_region"],
                      record["ship_postal_code"], record["ship_country"])
    normalize_address(record["bill_line1"], record["bill_line2"], record["bill_city"], record["bill_region"],
                      record["bill_postal_code"], record["bill_country"])


def main() -> None:
    """Run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=3000)
    args = parser.parse_args()

    intel = OfflineIpIntel(tor_exit_list=["185.220.101.0/24"], proxy_list=["45.0.0.0/16"])
    resolver = IdentityResolver(IdentityConfig(pepper="benchmark-pepper"), intel)
    r = random.Random(7)
    warmup = [_identity(r, -i - 1) for i in range(200)]
    for record in warmup:  # import-time and first-call costs are not what we measure
        resolver.resolve(record)
    records = [_identity(r, i) for i in range(args.samples)]

    clear_caches()
    cold = _time_each(records, resolver.resolve)
    warm = _time_each(records, resolver.resolve)
    info = address_cache_info()
    clear_caches()
    cold_addr = _time_each(records, _addresses)
    clear_caches()

    # Frame: ~3 rows per identity, as repeat customers and abusers re-use values.
    base = [_identity(r, i) for i in range(max(1, args.rows // 3))]
    rows = [dict(base[r.randrange(len(base))], request_id=f"row-{i}") for i in range(args.rows)]
    frame = pd.DataFrame(rows)
    start = time.perf_counter()
    out = resolve_frame(frame, resolver)
    frame_s = time.perf_counter() - start
    assert len(out) == len(frame)

    cold_p50, cold_p99 = _percentiles(cold)
    warm_p50, warm_p99 = _percentiles(warm)
    addr_p50, addr_p99 = _percentiles(cold_addr)
    share = sum(cold_addr) / sum(cold)
    hit_rate = info["hits"] / max(1, info["hits"] + info["misses"])
    table = [
        ("resolve one identity, cold caches", f"{cold_p50:.3f}", f"{cold_p99:.3f}", "ms", "p99 < 0.5 ms"),
        ("resolve one identity, warm caches", f"{warm_p50:.3f}", f"{warm_p99:.3f}", "ms", "p99 < 0.5 ms"),
        ("2 addresses alone, cold caches", f"{addr_p50:.3f}", f"{addr_p99:.3f}", "ms", ""),
        ("address parsing share of cold cost", f"{share:.0%}", "", "", ""),
        ("address cache hit rate after 2 passes", f"{hit_rate:.0%}", "", "", f"{info['hits']} hits"),
        (f"resolve_frame, {args.rows:,} rows", f"{args.rows / frame_s:,.0f}", "", "rows/s",
         f"{frame_s:.2f} s"),
    ]
    header = ("measure", "p50 / value", "p99", "unit", "note")
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    print(f"identity resolution ({args.samples} identities, {args.rows:,} frame rows)")
    for row in [header, tuple("-" * w for w in widths), *table]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
