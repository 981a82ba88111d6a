"""Behaviour of the simulated redemption history: contract, determinism, patterns, traps, labels, drift."""

from __future__ import annotations

import bisect
import ipaddress
import re
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from features.events import validate_events, validate_labels, validate_promotions
from features.ipintel import cloud_ranges
from simulation.simulate import (
    UA_DRIFT_FARM,
    DriftConfig,
    SimulatedHistory,
    SimulationConfig,
    simulate_history,
    summarize,
    write_history,
)

SMALL = SimulationConfig(n_events=20_000, seed=11)


@pytest.fixture(scope="module")
def history() -> SimulatedHistory:
    return simulate_history(SMALL)


@pytest.fixture(scope="module")
def joined(history: SimulatedHistory) -> pd.DataFrame:
    return history.events.merge(history.truth, on="request_id", validate="one_to_one")


def _gmail_mailbox(email: str) -> str:
    local, _, domain = email.strip().lower().partition("@")
    local = local.split("+", 1)[0]
    if domain in ("gmail.com", "googlemail.com"):
        return local.replace(".", "") + "@gmail.com"
    return f"{local}@{domain}"


def _cloud_membership(ips: list[str]) -> list[bool]:
    """Whether each IPv4 address lies inside any cloud range (sorted intervals, running max end)."""
    spans = sorted(
        (int(n.network_address), int(n.broadcast_address))
        for n in (ipaddress.ip_network(c) for c, _ in cloud_ranges()[1] if ":" not in c)
    )
    starts, max_end, running = [s for s, _ in spans], [], -1
    for _, end in spans:
        running = max(running, end)
        max_end.append(running)
    out = []
    for ip in ips:
        v = int(ipaddress.ip_address(ip))
        i = bisect.bisect_right(starts, v) - 1
        out.append(i >= 0 and max_end[i] >= v)
    return out


def _household(line1: str | None, postal: str | None) -> str:
    number = re.match(r"\s*(\d+)\s+(\w+)", line1 or "")
    return f"{number.group(1)} {number.group(2).lower()} {postal}" if number else ""


HARD = ("device_id", "phone_digits", "household", "local_ip", "payment_fingerprint")


def _with_hard_keys(rows: pd.DataFrame) -> pd.DataFrame:
    """Add raw-string approximations of the hard identities (digits of the phone, door of the address)."""
    return rows.assign(
        phone_digits=rows["phone"].str.replace(r"\D", "", regex=True).str[-10:],
        household=[
            _household(a, p) for a, p in zip(rows["ship_line1"], rows["ship_postal_code"], strict=True)
        ],
    )


def test_all_frames_pass_the_data_contract(history: SimulatedHistory) -> None:
    validate_events(history.events)
    validate_labels(history.labels)
    validate_promotions(history.promotions)
    assert history.events["ts"].is_monotonic_increasing
    assert history.events["request_id"].is_unique
    assert set(history.truth["request_id"]) == set(history.events["request_id"])
    assert set(history.truth["actor_id"]) <= set(history.actors["actor_id"])


def test_same_seed_gives_identical_frames_and_other_seed_differs() -> None:
    config = SimulationConfig(n_events=5_000, seed=3)
    first, second = simulate_history(config), simulate_history(config)
    for name in ("events", "labels", "promotions", "actors", "truth"):
        assert_frame_equal(getattr(first, name), getattr(second, name))
    other = simulate_history(SimulationConfig(n_events=5_000, seed=4))
    assert not first.events["email"].equals(other.events["email"])


def test_every_pattern_is_present(history: SimulatedHistory) -> None:
    patterns = set(history.truth.loc[history.truth["is_abuse"], "pattern"])
    assert patterns == {
        "welcome_cycling",
        "referral_self",
        "code_leak",
        "intro_reset",
        "sample_stacking",
        "wholesale_guest",
        "bot_spray",
    }


def test_abuse_is_a_realistic_share_of_discounted_orders(joined: pd.DataFrame) -> None:
    redeemed = joined[joined["outcome"] == "redeemed"]
    assert 0.03 <= redeemed["is_abuse"].mean() <= 0.12


def test_welcome_cyclers_reuse_a_hard_identity_across_different_emails(joined: pd.DataFrame) -> None:
    rows = _with_hard_keys(joined[joined["pattern"] == "welcome_cycling"])
    per_actor = rows.groupby("actor_id").agg(
        emails=("email", lambda s: s.str.strip().str.lower().nunique()),
        attempts=("request_id", "size"),
        **{h: (h, "nunique") for h in HARD},
    )
    multi = per_actor[per_actor["attempts"] >= 3]
    assert len(multi) > 10
    assert (multi["emails"] >= 2).all()
    # Every cycler keeps at least one hard identity across all of its attempts.
    assert (multi[list(HARD)] == 1).any(axis=1).all()
    # And many of the "new" emails fold back to one mailbox once gmail tricks are undone.
    folded = rows.assign(mailbox=rows["email"].map(_gmail_mailbox))
    per_fold = folded.groupby("actor_id").agg(raw=("email", "nunique"), boxes=("mailbox", "nunique"))
    assert (per_fold["boxes"] < per_fold["raw"]).mean() > 0.3


def test_leaked_codes_spread_to_many_identities_only_after_the_leak(
    history: SimulatedHistory, joined: pd.DataFrame
) -> None:
    first_day = history.events["ts"].min()
    for code, leaked_at in zip(history.leaks["promo_code"], history.leaks["leaked_at"], strict=True):
        uses = joined[joined["promo_code"] == code]
        before = uses[uses["ts"] < leaked_at]
        week = uses[(uses["ts"] >= leaked_at) & (uses["ts"] < leaked_at + pd.Timedelta(days=7))]
        weekly_before = before["device_id"].nunique() * 7 / max(1, (leaked_at - first_day).days)
        assert week["device_id"].nunique() > 3 * max(1.0, weekly_before)
        assert not before["is_abuse"].any()
        assert week["is_abuse"].mean() > 0.8


def test_sample_stackers_write_one_address_several_ways(joined: pd.DataFrame) -> None:
    rows = _with_hard_keys(joined[joined["pattern"] == "sample_stacking"])
    rows = rows.assign(spelling=rows["ship_line1"] + "|" + rows["ship_line2"].fillna(""))
    spellings = rows.groupby("actor_id").agg(
        spellings=("spelling", "nunique"),
        households=("household", "nunique"),
        emails=("email", "nunique"),
        attempts=("request_id", "size"),
    )
    multi = spellings[spellings["attempts"] >= 3]
    assert len(multi) > 5
    assert (multi["spellings"] >= 2).all()
    assert (multi["households"] == 1).all()
    assert (multi["emails"] >= 2).all()
    assert (rows["promo_type"] == "free_sample").all()


def test_self_referees_share_a_hard_identity_with_their_referrer(joined: pd.DataFrame) -> None:
    rows = _with_hard_keys(joined[joined["pattern"] == "referral_self"])
    referees = rows[rows["is_abuse"]]
    assert len(referees) > 20
    assert (referees["promo_type"] == "referral").all()
    assert referees["referrer_account_id"].notna().all()
    for referee in referees.itertuples():
        referrer_rows = rows[rows["account_id"] == str(referee.referrer_account_id)]
        assert len(referrer_rows) > 0
        assert any(getattr(referee, h) in set(referrer_rows[h]) for h in HARD)
        assert str(referee.account_id) != str(referee.referrer_account_id)


def test_intro_resetters_reuse_their_card_across_emails(joined: pd.DataFrame) -> None:
    rows = joined[joined["pattern"] == "intro_reset"]
    per_actor = rows.groupby("actor_id").agg(
        cards=("payment_fingerprint", "nunique"), emails=("email", "nunique"), attempts=("request_id", "size")
    )
    multi = per_actor[per_actor["attempts"] >= 2]
    assert len(multi) > 5
    assert (multi["cards"] == 1).all() and (multi["emails"] >= 2).all()
    assert (rows["promo_code"] == "TRIAL30").all()


def test_wholesale_codes_are_abused_in_guest_checkout_and_used_honestly_by_segment(
    joined: pd.DataFrame,
) -> None:
    # Bots that guess a wholesale code are code spraying, counted there.
    wholesale = joined[(joined["promo_type"] == "wholesale") & (joined["pattern"] != "bot_spray")]
    abuse, legit = wholesale[wholesale["is_abuse"]], wholesale[~wholesale["is_abuse"]]
    assert (abuse["pattern"] == "wholesale_guest").all() and abuse["is_guest"].all()
    assert len(legit) > 0 and not legit["is_guest"].any()
    assert set(legit["account_segment"]) <= {"wholesale", "vip"}


def test_bots_spray_invalid_codes_from_datacenter_tor_and_disposable_identities(
    history: SimulatedHistory, joined: pd.DataFrame
) -> None:
    import disposable_email_domains

    bots = joined[joined["pattern"] == "bot_spray"]
    assert (~bots["promo_valid"]).mean() > 0.8
    assert (bots.loc[~bots["promo_valid"], "outcome"] == "rejected").all()
    domains = bots["email"].dropna().str.split("@").str[1]
    assert domains.isin(disposable_email_domains.blocklist).mean() > 0.5
    assert (
        (bots["device_id"].isna()) | (bots["device_id"] == "00000000-0000-0000-0000-000000000000")
    ).mean() > 0.2
    in_cloud = sum(_cloud_membership(bots["ip"].dropna().drop_duplicates().tolist()))
    tor = bots["ip"].isin(history.tor_exits).sum()
    assert tor > 0
    assert in_cloud > 0


def test_legit_traps_look_suspicious_but_are_honest(history: SimulatedHistory, joined: pd.DataFrame) -> None:
    legit = joined[~joined["is_abuse"]]
    households = legit[legit["pattern"] == "legit_household"].merge(
        history.actors[["actor_id", "household_id"]], on="actor_id"
    )
    per_hh = households.groupby("household_id").agg(
        addresses=("ship_line1", lambda s: s.str.lower().nunique()),
        cards=("payment_fingerprint", "nunique"),
        people=("actor_id", "nunique"),
    )
    assert ((per_hh["people"] >= 2) & (per_hh["cards"] >= 2)).sum() > 20
    cgnat = legit[legit["pattern"] == "legit_cgnat"]
    accounts_per_ip = cgnat.groupby("ip")["account_id"].nunique()
    assert accounts_per_ip.max() >= 50
    vpn = legit[legit["pattern"] == "legit_vpn"]
    assert vpn["ip"].isin(history.proxies).mean() > 0.5
    traps = set(history.actors.loc[~history.actors["is_abuser"], "trap"])
    assert {"household", "cgnat", "vpn", "mover", "typo"} <= traps


def test_residential_ips_are_outside_every_cloud_range(joined: pd.DataFrame) -> None:
    homes = joined.loc[joined["pattern"] == "legit_repeat", "ip"].drop_duplicates().head(300)
    inside = _cloud_membership(homes.tolist())
    assert not any(inside), f"{homes[inside].tolist()[:3]} fall inside cloud ranges"


def test_labels_arrive_after_events_and_some_abuse_is_never_labeled(
    history: SimulatedHistory, joined: pd.DataFrame
) -> None:
    labeled = history.labels.merge(joined[["request_id", "ts", "is_abuse"]], on="request_id")
    assert (labeled["label_ts"] > labeled["ts"]).all()
    abuse = joined[joined["is_abuse"]]
    unlabeled = ~abuse["request_id"].isin(history.labels["request_id"])
    assert 0.15 < unlabeled.mean() < 0.6
    assert {"abuse", "legit"} == set(labeled["label"])
    legit_labeled = labeled[~labeled["is_abuse"]]
    assert 0 < (legit_labeled["label"] == "abuse").mean() < 0.05


def test_summary_has_one_row_per_pattern_and_a_total(history: SimulatedHistory) -> None:
    summary = summarize(history).set_index("pattern")
    assert summary.loc["total", "events"] == len(history.events)
    assert summary.drop(index="total")["events"].sum() == len(history.events)
    assert summary.loc["bot_spray", "abuse_rate"] == 1.0
    assert summary.loc["legit_repeat", "abuse_rate"] == 0.0


def test_write_history_writes_parquet_and_dated_ip_feeds(history: SimulatedHistory, tmp_path: Path) -> None:
    paths = write_history(history, tmp_path / "raw")
    assert {"events", "labels", "promotions", "actors", "truth", "tor_exits", "proxies"} <= set(paths)
    back = pd.read_parquet(paths["events"])
    validate_events(back)
    assert len(back) == len(history.events)
    feed = paths["tor_exits"].read_text().splitlines()
    assert feed[0].startswith("#") and "simulated" in feed[0]
    assert any(re.search(r"\d{4}-\d{2}-\d{2}", line) for line in feed if line.startswith("#"))
    entries = [line for line in feed if line and not line.startswith("#")]
    assert entries and all(ipaddress.ip_network(e, strict=False) for e in entries)


def test_new_bot_farm_drift_adds_a_profile_absent_before_start_day() -> None:
    drift = DriftConfig(kind="new_bot_farm", start_day=40)
    shifted = simulate_history(SimulationConfig(n_events=8_000, seed=5, drift=drift))
    cut = shifted.events["ts"].min().normalize() + pd.Timedelta(days=40)
    farm = shifted.events["user_agent"] == UA_DRIFT_FARM
    assert farm.sum() > 100
    assert (shifted.events.loc[farm, "ts"] >= cut).all()
    baseline = simulate_history(SimulationConfig(n_events=8_000, seed=5))
    assert not (baseline.events["user_agent"] == UA_DRIFT_FARM).any()


def test_seasonal_drift_raises_honest_traffic_after_start_day() -> None:
    base = simulate_history(SimulationConfig(n_events=8_000, seed=5))
    shifted = simulate_history(
        SimulationConfig(n_events=8_000, seed=5, drift=DriftConfig(kind="seasonal_legit", start_day=45))
    )

    def late_share(h: SimulatedHistory) -> float:
        cut = h.events["ts"].min().normalize() + pd.Timedelta(days=45)
        return float((h.events["ts"] >= cut).mean())

    assert late_share(shifted) > late_share(base) + 0.03


def test_bad_config_is_rejected_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="abuse_share"):
        SimulationConfig(abuse_share=0.9)
    with pytest.raises(ValueError, match="start_day"):
        SimulationConfig(days=30, drift=DriftConfig(kind="new_leak", start_day=45))
