"""Point-in-time batch features: hand-computed values, leakage guards, engine parity, real-time parity."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.definitions import (
    DISTINCT_TARGETS,
    WINDOWS,
    feature_views,
    velocity_queries,
    velocity_updates,
    view,
)
from features.events import ContractError
from features.pipeline import KEY_COLUMNS, build_features, encode_keys, write_features

T0 = pd.Timestamp("2026-03-01 12:00:00", tz="UTC")
HOUR = pd.Timedelta(hours=1)
SEC = pd.Timedelta(seconds=1)


def event(request_id: str, ts: pd.Timestamp, **overrides: Any) -> dict[str, Any]:
    """One keys-frame row with every key null unless given."""
    row: dict[str, Any] = {
        "request_id": request_id,
        "ts": ts,
        "promo_code": "WELCOME10",
        "promo_type": "welcome",
        "promo_valid": True,
        "outcome": "abandoned",
        "discount_value": 10.0,
        "is_guest": False,
        "account_created_at": pd.NaT,
        "account_segment": None,
        **{k: None for k in KEY_COLUMNS},
    }
    row.update(overrides)
    return row


def keys_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["account_created_at"] = pd.to_datetime(frame["account_created_at"], utc=True)
    return frame


def no_labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": pd.Series([], dtype=object),
            "label": pd.Series([], dtype=object),
            "label_source": pd.Series([], dtype=object),
            "label_ts": pd.Series([], dtype="datetime64[ns, UTC]"),
        }
    )


def labels_frame(rows: list[tuple[str, str, pd.Timestamp]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [r for r, _, _ in rows],
            "label": [lab for _, lab, _ in rows],
            "label_source": "manual_review",
            "label_ts": pd.to_datetime([ts for _, _, ts in rows], utc=True),
        }
    )


def at(frame: pd.DataFrame, ts: pd.Timestamp, **keys: str) -> pd.Series:
    """The single row of a view frame for these join keys at ``ts``."""
    mask = frame["event_timestamp"] == ts
    for column, value in keys.items():
        mask &= frame[column] == value
    rows = frame[mask]
    assert len(rows) == 1, f"expected one row at {ts} for {keys}, found {len(rows)}"
    return rows.iloc[0]


# ------------------------------------------------------------------------------ hand-computed values


@pytest.fixture(scope="module")
def device_history() -> dict[str, pd.DataFrame]:
    rows = [
        event("a1", T0, device_key="D", account_key="A1", email_key="E1", promo_valid=False),
        event("a2", T0 + 20 * 60 * SEC, device_key="D", account_key="A2", email_key="E1", outcome="redeemed"),
        event("a3", T0 + HOUR + SEC, device_key="D", account_key="A1", email_key="E2"),
        event("a4", T0 + HOUR + 20 * 60 * SEC, device_key="D", account_key="A3", outcome="redeemed"),
        event("a5", T0 + 3 * 86_400 * SEC, device_key="D", account_key="A1", email_key="E3"),
    ]
    return build_features(keys_frame(rows), no_labels())


def test_first_event_of_an_entity_has_zero_counts_and_no_age(device_history: dict[str, pd.DataFrame]) -> None:
    row = at(device_history["device_stats"], T0, device_key="D")
    assert row["attempts_30d"] == 0 and row["distinct_accounts_30d"] == 0
    assert np.isnan(row["first_seen_days"])


def test_event_one_hour_and_one_second_earlier_is_outside_attempts_1h(
    device_history: dict[str, pd.DataFrame],
) -> None:
    # a3 is 1h+1s after a1 and 40min+1s after a2: only a2 is inside its last hour.
    row = at(device_history["device_stats"], T0 + HOUR + SEC, device_key="D")
    assert row["attempts_1h"] == 1
    assert row["attempts_24h"] == 2
    # a4 is exactly 1h after a2: the window [ts - 1h, ts) includes it; a1 has left.
    row4 = at(device_history["device_stats"], T0 + HOUR + 20 * 60 * SEC, device_key="D")
    assert row4["attempts_1h"] == 2


def test_redeemed_and_invalid_counts_filter_attempts(device_history: dict[str, pd.DataFrame]) -> None:
    row = at(device_history["device_stats"], T0 + HOUR + SEC, device_key="D")
    assert row["redeemed_7d"] == 1 and row["redeemed_30d"] == 1
    assert row["invalid_24h"] == 1
    late = at(device_history["device_stats"], T0 + 3 * 86_400 * SEC, device_key="D")
    assert late["redeemed_7d"] == 2
    assert late["invalid_24h"] == 0  # the invalid attempt is three days old


def test_distinct_counts_count_each_target_once_per_window(device_history: dict[str, pd.DataFrame]) -> None:
    row = at(device_history["device_stats"], T0 + 3 * 86_400 * SEC, device_key="D")
    assert row["distinct_accounts_30d"] == 3  # A1 twice, A2, A3
    assert row["distinct_emails_30d"] == 2  # E1 twice, E2; a4 had no email
    assert row["distinct_accounts_24h"] == 0  # everything is three days old
    row4 = at(device_history["device_stats"], T0 + HOUR + 20 * 60 * SEC, device_key="D")
    assert row4["distinct_accounts_24h"] == 2


def test_first_seen_days_measures_from_the_first_event(device_history: dict[str, pd.DataFrame]) -> None:
    row = at(device_history["device_stats"], T0 + 3 * 86_400 * SEC, device_key="D")
    assert row["first_seen_days"] == pytest.approx(3.0)


def test_account_view_counts_the_account_across_devices(device_history: dict[str, pd.DataFrame]) -> None:
    row = at(device_history["account_stats"], T0 + 3 * 86_400 * SEC, account_key="A1")
    assert row["attempts_30d"] == 2
    assert row["distinct_devices_30d"] == 1
    assert "distinct_accounts_30d" not in device_history["account_stats"].columns


def test_code_stats_share_of_new_accounts_and_hours_since_first_use() -> None:
    rows = [
        event("c1", T0, device_key="D1", is_guest=True, outcome="redeemed"),
        event("c2", T0 + HOUR, device_key="D2", account_key="A1", account_created_at=T0 - 2 * 86_400 * SEC),
        event(
            "c3", T0 + 2 * HOUR, device_key="D3", account_key="A2", account_created_at=T0 - 30 * 86_400 * SEC
        ),
        event("c4", T0 + 3 * HOUR, device_key="D1", outcome="redeemed"),
        event("c5", T0 + 5 * HOUR, device_key="D4"),
    ]
    frames = build_features(keys_frame(rows), no_labels())
    code = frames["code_stats"]
    first = at(code, T0, promo_code="WELCOME10")
    assert np.isnan(first["hours_since_first_use"]) and np.isnan(first["new_account_share_7d"])
    row = at(code, T0 + 5 * HOUR, promo_code="WELCOME10")
    # c1 guest (new), c2 account 2 days old (new), c3 30 days old, c4 neither guest nor known age.
    assert row["new_account_share_7d"] == pytest.approx(2 / 4)
    assert row["hours_since_first_use"] == pytest.approx(5.0)
    assert row["redeemed_total"] == 2
    assert row["distinct_devices_24h"] == 3 and row["attempts_24h"] == 4


def test_identity_code_redeemed_total_counts_this_code_for_this_identity_only() -> None:
    rows = [
        event("p1", T0, household_key="H", outcome="redeemed"),
        event("p2", T0 + 40 * 86_400 * SEC, household_key="H", outcome="redeemed"),
        event("p3", T0 + 41 * 86_400 * SEC, household_key="H", promo_code="OTHER", outcome="redeemed"),
        event("p4", T0 + 42 * 86_400 * SEC, household_key="H"),
    ]
    frames = build_features(keys_frame(rows), no_labels())
    pair = frames["household_code_stats"]
    row = at(pair, T0 + 42 * 86_400 * SEC, household_key="H", promo_code="WELCOME10")
    assert row["redeemed_total"] == 2  # all time, not windowed
    assert row["attempts_24h"] == 0
    assert at(pair, T0 + 41 * 86_400 * SEC, household_key="H", promo_code="OTHER")["redeemed_total"] == 0


# ------------------------------------------------------------------------------------ point in time


def test_an_event_never_sees_itself_or_a_later_event_at_the_same_time() -> None:
    rows = [
        event("s1", T0, device_key="D", account_key="A1"),
        event("s2", T0 + HOUR, device_key="D", account_key="A2"),
        event("s3", T0 + HOUR, device_key="D", account_key="A3"),
    ]
    device = build_features(keys_frame(rows), no_labels())["device_stats"]
    events_only = device[device["event_timestamp"] < T0 + HOUR + SEC]
    assert list(events_only["event_timestamp"]) == [T0, T0 + HOUR]  # one row per (key, timestamp)
    tied = at(device, T0 + HOUR, device_key="D")
    assert tied["attempts_24h"] == 1 and tied["distinct_accounts_24h"] == 1


def test_planting_or_changing_a_later_event_leaves_earlier_rows_unchanged(
    device_history: dict[str, pd.DataFrame],
) -> None:
    rows = [
        event("a1", T0, device_key="D", account_key="A1", email_key="E1", promo_valid=False),
        event("a2", T0 + 20 * 60 * SEC, device_key="D", account_key="A2", email_key="E1", outcome="redeemed"),
        event("a3", T0 + HOUR + SEC, device_key="D", account_key="A1", email_key="E2"),
        event("a4", T0 + HOUR + 20 * 60 * SEC, device_key="D", account_key="A9", outcome="rejected"),
        event("a5", T0 + 3 * 86_400 * SEC, device_key="D", account_key="A1", email_key="E3"),
        event("late", T0 + HOUR + 20 * 60 * SEC, device_key="D", account_key="A7", promo_valid=False),
    ]
    changed = build_features(keys_frame(rows), no_labels(), as_of=T0 + 10 * 86_400 * SEC)
    cutoff = T0 + HOUR + 20 * 60 * SEC
    for name in ("device_stats", "account_stats", "code_stats", "email_stats"):
        before = device_history[name][device_history[name]["event_timestamp"] < cutoff]
        after = changed[name][changed[name]["event_timestamp"] < cutoff]
        pd.testing.assert_frame_equal(
            before.drop(columns="created_timestamp").reset_index(drop=True),
            after.drop(columns="created_timestamp").reset_index(drop=True),
        )


def test_labels_count_only_after_they_arrive() -> None:
    rows = [
        event("l1", T0, device_key="D"),
        event("l2", T0 + HOUR, device_key="D"),
        event("l3", T0 + 2 * HOUR, device_key="D"),
        event("l4", T0 + 3 * HOUR, device_key="D"),
    ]
    labels = labels_frame([("l1", "abuse", T0 + 2 * HOUR + SEC), ("l2", "legit", T0 + HOUR + SEC)])
    device = build_features(keys_frame(rows), labels)["device_stats"]
    assert at(device, T0 + 2 * HOUR, device_key="D")["abuse_labels"] == 0  # label arrives 1s later
    assert at(device, T0 + 3 * HOUR, device_key="D")["abuse_labels"] == 1
    # Planting a label from the far future changes nothing at all before it arrives.
    planted = labels_frame(
        [
            ("l1", "abuse", T0 + 2 * HOUR + SEC),
            ("l2", "legit", T0 + HOUR + SEC),
            ("l3", "abuse", T0 + 99 * HOUR),
        ]
    )
    replanted = build_features(keys_frame(rows), planted)["device_stats"]
    pd.testing.assert_frame_equal(device, replanted)


def test_an_event_labeled_before_it_happened_still_counts_only_for_later_events() -> None:
    rows = [event("x1", T0, device_key="D"), event("x2", T0 + HOUR, device_key="D")]
    labels = labels_frame([("x2", "abuse", T0 - HOUR)])
    device = build_features(keys_frame(rows), labels)["device_stats"]
    assert at(device, T0 + HOUR, device_key="D")["abuse_labels"] == 0
    assert at(device, T0 + HOUR + SEC, device_key="D")["abuse_labels"] == 1  # the snapshot


def test_null_keys_produce_no_rows_for_that_view() -> None:
    rows = [event("n1", T0, device_key="D"), event("n2", T0 + HOUR, device_key=None, phone_key="P")]
    frames = build_features(keys_frame(rows), no_labels())
    assert set(frames["device_stats"]["device_key"]) == {"D"}
    assert frames["household_stats"].empty and frames["household_code_stats"].empty
    assert list(frames["phone_stats"]["event_timestamp"]) == [T0 + HOUR, T0 + HOUR + SEC]
    assert frames["device_stats"]["attempts_24h"].tolist() == [0, 1]  # n2 did not count for D


def test_snapshot_row_at_as_of_holds_the_state_from_all_earlier_events() -> None:
    rows = [
        event("q1", T0, device_key="D", outcome="redeemed"),
        event("q2", T0 + HOUR, device_key="D"),
        event("q3", T0 + 10 * HOUR, device_key="D"),
    ]
    default = build_features(keys_frame(rows), no_labels())["device_stats"]
    snap = at(default, T0 + 10 * HOUR + SEC, device_key="D")
    assert snap["attempts_1h"] == 1 and snap["attempts_24h"] == 3 and snap["redeemed_7d"] == 1
    assert (default["created_timestamp"] == T0 + 10 * HOUR + SEC).all()
    explicit = build_features(keys_frame(rows), no_labels(), as_of=T0 + 2 * HOUR)["device_stats"]
    # Events at or after as_of are outside the build.
    assert list(explicit["event_timestamp"]) == [T0, T0 + HOUR, T0 + 2 * HOUR]
    assert at(explicit, T0 + 2 * HOUR, device_key="D")["attempts_1h"] == 1


def test_idle_entities_get_a_snapshot_only_when_they_carry_labels_or_redemptions() -> None:
    day = pd.Timedelta(days=1)
    rows = [
        event("idle", T0, device_key="IDLE", outcome="abandoned"),
        event("labeled", T0, device_key="LABELED"),
        event("spent", T0, device_key="SPENT", outcome="redeemed"),
        event("recent", T0 + 40 * day, device_key="RECENT"),
    ]
    labels = labels_frame([("labeled", "abuse", T0 + 2 * day)])
    frames = build_features(keys_frame(rows), labels)
    as_of = T0 + 40 * day + SEC
    snap = frames["device_stats"]
    snapped = set(snap.loc[snap["event_timestamp"] == as_of, "device_key"])
    # Idle past every window: reads online as unseen (counts 0), so no snapshot is written for it.
    assert snapped == {"LABELED", "RECENT"}
    assert at(snap, as_of, device_key="LABELED")["abuse_labels"] == 1
    # One-per-customer needs the past redemption of this code by this device, however old.
    pairs = frames["device_code_stats"]
    kept = set(pairs.loc[pairs["event_timestamp"] == as_of, "device_key"])
    assert kept == {"SPENT", "RECENT", "LABELED"}
    assert at(pairs, as_of, device_key="SPENT", promo_code="WELCOME10")["redeemed_total"] == 1


def test_every_view_has_join_keys_timestamps_and_catalog_dtypes(
    device_history: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    paths = write_features(device_history, tmp_path)
    assert set(paths) == {v.name for v in feature_views()}
    for v in feature_views():
        frame = pd.read_parquet(paths[v.name])
        assert list(frame.columns) == [*v.join_keys, "event_timestamp", "created_timestamp", *v.feature_names]
        assert str(frame["event_timestamp"].dtype) == "datetime64[us, UTC]"
        for f in v.features:
            assert str(frame[f.name].dtype) == f.dtype, (v.name, f.name)


def test_bad_input_names_the_field() -> None:
    good = keys_frame([event("b1", T0, device_key="D")])
    with pytest.raises(ContractError, match="promo_code"):
        build_features(good.drop(columns="promo_code"), no_labels())
    naive = good.assign(ts=good["ts"].dt.tz_localize(None))
    with pytest.raises(ContractError, match="ts"):
        build_features(naive, no_labels(), as_of=T0 + HOUR)
    with pytest.raises(ContractError, match="request_id"):
        build_features(pd.concat([good, good]), no_labels())


# ------------------------------------------------------- a brute-force reference on a random history


def random_events(
    rng: np.random.Generator,
    seconds: np.ndarray,
    draw_keys: Callable[[], dict[str, str | None]],
    *,
    prefix: str,
    codes: int,
) -> list[dict[str, Any]]:
    """One event per second offset, keys from ``draw_keys``; a third are guests (no account key)."""
    rows = []
    for i, s in enumerate(seconds):
        guest = bool(rng.random() < 0.3)
        keys = draw_keys()
        if guest:
            keys["account_key"] = None
        created = None if guest else T0 + (int(s) - int(rng.integers(0, 14 * 86_400))) * SEC
        rows.append(
            event(
                f"{prefix}{i:04d}",
                T0 + int(s) * SEC,
                **keys,
                promo_code=f"C{rng.integers(0, codes)}",
                promo_valid=bool(rng.random() > 0.2),
                outcome=str(rng.choice(["redeemed", "abandoned", "rejected"])),
                is_guest=guest,
                account_created_at=created,
            )
        )
    return rows


def synthetic_keys(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random keys from small pools over ten days, with ties, nulls and late labels."""
    rng = np.random.default_rng(seed)
    pools = {
        "device_key": 12,
        "household_key": 10,
        "payment_key": 10,
        "phone_key": 10,
        "email_key": 18,
        "network_key": 6,
        "local_ip_key": 8,
        "account_key": 15,
    }
    seconds = np.sort(rng.integers(0, 10 * 86_400, n))
    seconds[5:15] = seconds[5]  # a burst of identical timestamps

    def draw_keys() -> dict[str, str | None]:
        return {
            k: (None if rng.random() < 0.15 else f"{k[:2]}{rng.integers(0, p)}") for k, p in pools.items()
        }

    keys_df = keys_frame(random_events(rng, seconds, draw_keys, prefix="r", codes=3))
    picked = keys_df.sample(frac=0.3, random_state=seed)
    labels = labels_frame(
        [
            (r, str(rng.choice(["abuse", "legit"])), ts + int(rng.integers(0, 3 * 86_400)) * SEC)
            for r, ts in zip(picked["request_id"], picked["ts"], strict=True)
        ]
    )
    return keys_df, labels


def reference(keys: pd.DataFrame, labels: pd.DataFrame, as_of: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """The catalog's definitions applied literally, one output row at a time."""
    abuse_at = dict(
        zip(
            labels.loc[labels["label"] == "abuse", "request_id"],
            labels.loc[labels["label"] == "abuse", "label_ts"],
            strict=True,
        )
    )
    out: dict[str, pd.DataFrame] = {}
    for v in feature_views():
        ev = keys.dropna(subset=list(v.join_keys))
        rows = []
        for entity, group in ev.groupby(list(v.join_keys)):
            entity = entity if isinstance(entity, tuple) else (entity,)
            for t in [*sorted(set(group["ts"])), as_of]:
                prior = group[group["ts"] < t]
                row: dict[str, Any] = dict(zip(v.join_keys, entity, strict=True))
                row["event_timestamp"] = t
                for f in v.features:
                    win = prior if f.window is None else prior[prior["ts"] >= t - WINDOWS[f.window] * SEC]
                    if f.kind == "count":
                        if f.only == "redeemed":
                            win = win[win["outcome"] == "redeemed"]
                        elif f.only == "invalid":
                            win = win[~win["promo_valid"]]
                        row[f.name] = len(win)
                    elif f.kind == "distinct":
                        row[f.name] = win[f"{f.target}_key"].nunique()
                    elif f.kind == "age":
                        unit = 3600 if f.name.startswith("hours") else 86_400
                        row[f.name] = (t - prior["ts"].min()).total_seconds() / unit if len(prior) else np.nan
                    elif f.kind == "share":
                        new = win["is_guest"] | (win["account_created_at"] >= win["ts"] - 7 * 86_400 * SEC)
                        row[f.name] = new.sum() / len(win) if len(win) else np.nan
                    elif f.kind == "labels":
                        row[f.name] = sum(1 for r in prior["request_id"] if r in abuse_at and abuse_at[r] < t)
                rows.append(row)
        out[v.name] = pd.DataFrame(rows, columns=[*v.join_keys, "event_timestamp", *v.feature_names])
    return out


def normalised(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    frame = frame.drop(columns="created_timestamp", errors="ignore").copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    for column in frame.columns:
        if column not in keys and column != "event_timestamp":
            frame[column] = frame[column].astype("float64")
    return frame.sort_values([*keys, "event_timestamp"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def random_history() -> tuple[pd.DataFrame, pd.DataFrame]:
    return synthetic_keys(300, seed=7)


@pytest.fixture(scope="module")
def random_reference(random_history: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    keys, labels = random_history
    return reference(keys, labels, keys["ts"].max() + SEC)


# "numpy" computes in numpy (features.pointintime); "duckdb" runs the SQL that Spark runs.
@pytest.mark.parametrize("engine", ["numpy", "duckdb"])
def test_local_engines_match_the_literal_definitions_on_a_random_history(
    random_history: tuple[pd.DataFrame, pd.DataFrame], random_reference: dict[str, pd.DataFrame], engine: str
) -> None:
    keys, labels = random_history
    built = build_features(keys, labels, engine=engine)  # type: ignore[arg-type]
    expected = random_reference
    for v in feature_views():
        pd.testing.assert_frame_equal(
            normalised(built[v.name], v.join_keys),
            normalised(expected[v.name], v.join_keys),
            check_exact=False,
        )


# ------------------------------------------------------------- the numpy computation equals the SQL


def edge_history(seed: int, n: int = 600) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A history built to hit the edges: times on a coarse grid over 60 days, so many events tie and
    many gaps are exactly 1h, 24h or 7d; two busy values per key among a long tail of rare ones; a
    fifth of the keys null; labels arriving before, at and after their event, some after as_of."""
    rng = np.random.default_rng(seed)
    days = rng.integers(0, 60, n)
    slots = rng.choice([0, 1800, 3600, 5400, 86_400 - 1, 86_400 + 3600], n)  # seconds into the day
    seconds = np.sort(days * 86_400 + slots)
    view_keys = ("device", "household", "payment", "phone", "email", "network", "local_ip", "account")

    def pick(prefix: str) -> str | None:
        draw = rng.random()
        if draw < 0.2:
            return None
        if draw < 0.7:
            return f"{prefix}-busy{rng.integers(0, 2)}"
        return f"{prefix}-{rng.integers(0, 150)}"

    def draw_keys() -> dict[str, str | None]:
        return {f"{e}_key": pick(e) for e in view_keys}

    keys_df = keys_frame(random_events(rng, seconds, draw_keys, prefix="e", codes=4))
    picked = keys_df.sample(frac=0.4, random_state=seed)
    offsets = rng.choice([-86_400, -3600, 0, 1, 3600, 86_400, 20 * 86_400], len(picked))
    labels = labels_frame(
        [
            (r, str(rng.choice(["abuse", "abuse", "legit"])), ts + int(o) * SEC)
            for r, ts, o in zip(picked["request_id"], picked["ts"], offsets, strict=True)
        ]
    )
    return keys_df, labels


@pytest.mark.parametrize(
    ("seed", "as_of_day"),
    [(1, 50), (2, 61), (3, 45), (4, -1)],  # -1: before every event, so every view is empty
)
def test_numpy_computation_equals_the_sql_on_duckdb(seed: int, as_of_day: int) -> None:
    keys, labels = edge_history(seed)
    as_of = T0 + pd.Timedelta(days=as_of_day)
    fast = build_features(keys, labels, as_of=as_of, engine="numpy")
    sql = build_features(keys, labels, as_of=as_of, engine="duckdb")
    assert list(fast) == list(sql)
    for v in feature_views():
        pd.testing.assert_frame_equal(fast[v.name], sql[v.name], check_exact=True)
    if as_of_day < 0:
        assert all(frame.empty for frame in fast.values())
    else:
        # The history does reach the edges it was built for: idle entities left out, labels counted.
        device = fast["device_stats"]
        assert device["abuse_labels"].max() > 0 and device["distinct_accounts_30d"].max() > 1
        snapshots = device[device["event_timestamp"] == as_of]
        assert 0 < len(snapshots) < device["device_key"].nunique()


def test_key_codes_follow_the_sort_order_of_the_strings() -> None:
    strings = ["b", None, "é", "Z", "a", "aa", "b", np.nan, "\U0001f600", "ｚ"]
    base = pd.DataFrame({"device_key": strings, "promo_code": ["X"] * len(strings)})
    encoded, books = encode_keys(base)
    present = [s for s in strings if isinstance(s, str)]
    assert list(books["device_key"]) == sorted(set(present))
    codes = encoded["device_key"]
    assert codes.isna().tolist() == [not isinstance(s, str) for s in strings]
    assert [books["device_key"][c] for c in codes.dropna()] == present
    # Keys that are not strings (outside the contract) still encode, through pandas.
    numbers = pd.DataFrame({"device_key": [3, 1, None, 2], "promo_code": ["X"] * 4})
    encoded, books = encode_keys(numbers)
    assert list(books["device_key"]) == [1, 2, 3] and encoded["device_key"].tolist()[:2] == [2, 0]
    raw = pd.DataFrame({"device_key": [b"b", b"a", None, b"a"], "promo_code": ["X"] * 4})
    encoded, books = encode_keys(raw)
    assert list(books["device_key"]) == [b"a", b"b"]  # bytes stay bytes
    odd = pd.DataFrame({"device_key": ["b", "\ud800", "a"], "promo_code": ["X"] * 3})
    assert list(encode_keys(odd)[1]["device_key"]) == ["a", "b", "\ud800"]  # no UTF-8 form: pandas
    nothing = pd.DataFrame({"device_key": [None, None], "promo_code": ["X", "Y"]})
    encoded, books = encode_keys(nothing)
    assert encoded["device_key"].isna().all() and len(books["device_key"]) == 0


# -------------------------------------------------------------------------------------- Spark parity


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    pytest.importorskip("pyspark")
    from features.pipeline import spark_session

    session = spark_session()
    yield session
    session.stop()


@pytest.mark.slow
@pytest.mark.xdist_group("spark")
def test_spark_and_duckdb_build_identical_frames(
    spark: Any, random_history: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    keys, labels = random_history
    on_duckdb = build_features(keys, labels, engine="duckdb")
    on_spark = build_features(keys, labels, engine="spark")
    for v in feature_views():
        pd.testing.assert_frame_equal(
            normalised(on_duckdb[v.name], v.join_keys), normalised(on_spark[v.name], v.join_keys)
        )


# ------------------------------------------------------------------------- real-time counters parity


def test_velocity_replay_equals_offline_features(tmp_path: Path) -> None:
    from features.velocity import SqliteVelocity

    keys, labels = synthetic_keys(120, seed=11)
    keys = keys.drop_duplicates("ts")  # the live path records ties one after the other
    built = build_features(keys, labels)
    store = SqliteVelocity(tmp_path / "velocity.db")
    compared = 0
    try:
        for row in keys.sort_values("ts").to_dict("records"):
            record: dict[str, Any] = {
                str(k): (None if pd.isna(v) else v) for k, v in row.items() if not isinstance(v, pd.Timestamp)
            }
            now = row["ts"].timestamp()
            queries = velocity_queries(record, now)
            values = store.read([(counter, since) for _, counter, since in queries])
            for (qualified, _, _), value in zip(queries, values, strict=True):
                view_name, feature = qualified.split("__")
                v = view(view_name)
                offline = at(built[view_name], row["ts"], **{k: str(record[k]) for k in v.join_keys})
                assert offline[feature] == value, (qualified, row["request_id"])
                compared += 1
            store.record(str(record["request_id"]), now, velocity_updates(record))
    finally:
        store.close()
    assert compared > 500


def test_velocity_queries_cover_every_short_window_feature() -> None:
    row = {
        "request_id": "r1",
        "promo_code": "C",
        "promo_valid": False,
        **{
            f"{e}_key": f"{e}-1"
            for e in ("device", "household", "payment", "phone", "email", "network", "local_ip", "account")
        },
    }
    queried = {name for name, _, _ in velocity_queries(row, 1_000_000.0)}
    expected = {
        f"{v.name}__{f.name}" for v in feature_views() for f in v.features if f.window in ("1h", "24h")
    }
    assert queried == expected
    counters = {counter for counter, _ in velocity_updates(row)}
    assert "device_stats|device-1|invalid" in counters
    assert f"device_stats|device-1|{DISTINCT_TARGETS['account']}" in counters
    assert "device_code_stats|device-1|C|attempts" in counters
    assert not any(c.endswith("|redeemed") for c in counters)  # redemptions are recorded at outcome time
