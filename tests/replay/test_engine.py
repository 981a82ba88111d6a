"""The replay engine: the service's Scorer, the history's clock, caps that see recorded outcomes."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from replay.engine import PointInTimeOnline, Replayer, replay
from scoring.rules import default_rules
from tests.scoring.conftest import FakeResolver

T0 = pd.Timestamp("2026-06-01", tz="UTC")


def _body(
    rid: str, minutes: float, *, code: str = "ONCE", single_use: bool = True, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": rid,
        "timestamp": (T0 + pd.Timedelta(minutes=minutes)).isoformat(),
        "promotion": {"code": code, "type": "sitewide", "single_use": single_use, "discount_value": 20.0},
        "account": {"account_id": f"acct-{rid}"},
        "email": f"{rid}@example.com",
        "device": {"device_id": f"dev-{rid}"},
        "ip": "198.51.100.7",
    }
    body.update(extra)
    return body


def _online(rids: list[str]) -> PointInTimeOnline:
    return PointInTimeOnline(pd.DataFrame({"request_id": rids, "code_stats__attempts_1h": 0.0}))


def test_a_single_use_code_redeemed_in_the_warm_up_is_refused_in_the_window() -> None:
    bodies = [_body("first", 0), _body("second", 30), _body("third", 60)]
    out = replay(
        bodies,
        ["redeemed", "redeemed", "redeemed"],
        _online(["first", "second", "third"]),
        Replayer(FakeResolver(), None, default_rules()),
        warm=1,
    )
    assert out["request_id"].tolist() == ["second", "third"]
    assert out["decision"].tolist() == ["refuse", "refuse"]
    assert out["ts"].tolist() == [T0 + pd.Timedelta(minutes=30), T0 + pd.Timedelta(minutes=60)]


def test_a_refused_or_abandoned_attempt_does_not_use_up_the_code() -> None:
    bodies = [_body("first", 0), _body("second", 5)]
    out = replay(
        bodies,
        ["abandoned", "redeemed"],
        _online(["first", "second"]),
        Replayer(FakeResolver(), None, default_rules()),
    )
    assert out["decision"].tolist()[1] != "refuse"


def test_the_history_clock_drives_the_windows() -> None:
    # Four accounts on one device: minutes apart the fourth sees three others in 24 h; days apart none.
    def run(gap_minutes: float) -> float:
        bodies = [
            _body(
                f"a{i}", gap_minutes * i, code=f"C{i}", single_use=False, device={"device_id": "dev-shared"}
            )
            for i in range(4)
        ]
        online = PointInTimeOnline(pd.DataFrame({"request_id": [b["request_id"] for b in bodies]}))
        out = replay(bodies, ["redeemed"] * 4, online, Replayer(FakeResolver(), None, default_rules()))
        return float(out["score"].iloc[-1])

    assert run(5) > run(2 * 24 * 60)


def test_an_attempt_the_feature_frame_does_not_hold_reads_as_missing() -> None:
    online = _online(["known"])
    assert online.read({"request_id": "known"}) == {"code_stats__attempts_1h": 0.0}
    assert math.isnan(online.read({"request_id": "other"})["code_stats__attempts_1h"])
