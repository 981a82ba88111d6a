"""Behaviour of the simulated history: contract, determinism, patterns, traps, labels, feeds, drift."""

from __future__ import annotations

import bisect
import ipaddress
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from features.events import validate_events, validate_labels, validate_promotions
from features.ipintel import cloud_ranges
from simulation.simulate import (
    EVASION_TIERS,
    UA_DRIFT_FARM,
    DriftConfig,
    SimulatedHistory,
    SimulationConfig,
    address_variant,
    format_phone,
    gmail_variant,
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


def _membership(ips: list[str], cidrs: list[str]) -> list[bool]:
    """Whether each IPv4 address lies inside any of ``cidrs`` (sorted intervals, running max end)."""
    spans = sorted(
        (int(n.network_address), int(n.broadcast_address))
        for n in (ipaddress.ip_network(c, strict=False) for c in cidrs if ":" not in c)
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


def _cloud_membership(ips: list[str]) -> list[bool]:
    return _membership(ips, [c for c, _ in cloud_ranges()[1]])


def _household(line1: str | None, postal: str | None) -> str:
    number = re.match(r"\s*(\d+)\s+(\w+)", line1 or "")
    return f"{number.group(1)} {number.group(2).lower()} {postal}" if number else ""


HARD = ("device_id", "phone_digits", "household", "local_ip", "payment_fingerprint")
RESIDUE = ("local_ip", "ip24")


def _with_hard_keys(rows: pd.DataFrame) -> pd.DataFrame:
    """Raw-string approximations of the hard identities (phone digits, door) and the home /24."""
    return rows.assign(
        phone_digits=rows["phone"].str.replace(r"\D", "", regex=True).str[-10:],
        household=[
            _household(a, p) for a, p in zip(rows["ship_line1"], rows["ship_postal_code"], strict=True)
        ],
        ip24=rows["ip"].str.rsplit(".", n=1).str[0],
    )


def _sent_in_full(rows: pd.DataFrame) -> pd.DataFrame:
    """Attempts whose checkout sent an email, a card and an address.

    A digital order, a code applied before payment or an app leaves them out, for abusers and honest
    shoppers alike; what was not sent cannot show which identity an abuser kept or changed.
    """
    return rows[rows["email"].notna() & rows["payment_fingerprint"].notna() & rows["ship_line1"].notna()]


def _one_per_visit(rows: pd.DataFrame) -> pd.DataFrame:
    """Drop retries minutes after an actor's previous attempt (challenges, mistyped codes)."""
    rows = rows.sort_values(["actor_id", "ts"])
    gap = rows.groupby("actor_id")["ts"].diff()
    return rows[gap.isna() | (gap > pd.Timedelta(hours=2))]


def _constant(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """Per actor: some column keeps one value over all its attempts (missing values aside)."""
    per = frame.groupby("actor_id").agg(**{c: (c, "nunique") for c in columns})
    present = frame.groupby("actor_id").agg(**{c: (c, "count") for c in columns})
    return ((per == 1) & (present >= 2)).any(axis=1)


def test_all_frames_pass_the_data_contract(history: SimulatedHistory) -> None:
    validate_events(history.events)
    validate_labels(history.labels)
    validate_promotions(history.promotions)
    assert history.events["ts"].is_monotonic_increasing
    assert history.events["request_id"].is_unique
    assert set(history.truth["request_id"]) == set(history.events["request_id"])
    assert set(history.truth["actor_id"]) <= set(history.actors["actor_id"])
    assert abs(len(history.events) - SMALL.n_events) < 0.05 * SMALL.n_events


def test_same_seed_gives_identical_frames_and_other_seed_differs() -> None:
    config = SimulationConfig(n_events=5_000, seed=3)
    first, second = simulate_history(config), simulate_history(config)
    for name in ("events", "labels", "promotions", "actors", "truth", "leaks"):
        assert_frame_equal(getattr(first, name), getattr(second, name))
    assert first.tor_exits == second.tor_exits and first.proxy_listed_at == second.proxy_listed_at
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


def test_truth_carries_each_abusers_evasion_tier(history: SimulatedHistory, joined: pd.DataFrame) -> None:
    assert {"request_id", "actor_id", "pattern", "is_abuse", "evasion"} <= set(history.truth.columns)
    honest_actor = ~joined["actor_id"].isin(history.actors.loc[history.actors["is_abuser"], "actor_id"])
    assert (joined.loc[honest_actor, "evasion"] == "none").all()
    abuse = joined[joined["is_abuse"]]
    assert set(abuse["evasion"]) == set(EVASION_TIERS)


def test_abuse_is_a_realistic_share_of_discounted_orders(joined: pd.DataFrame) -> None:
    redeemed = joined[joined["outcome"] == "redeemed"]
    assert 0.03 <= redeemed["is_abuse"].mean() <= 0.12


def test_welcome_cyclers_reuse_a_durable_identity_across_emails(joined: pd.DataFrame) -> None:
    rows = _with_hard_keys(
        _sent_in_full(joined[(joined["pattern"] == "welcome_cycling") & (joined["promo_type"] == "welcome")])
    )
    attempts = rows.groupby("actor_id").size()
    emails = rows.groupby("actor_id")["email"].agg(lambda s: s.str.strip().str.lower().nunique())
    multi = attempts[attempts >= 3].index
    assert len(multi) > 10
    assert (emails[multi] >= 2).all()
    tier = rows.groupby("actor_id")["evasion"].first()
    rotating = [a for a in multi if tier[a] == "rotating"]
    others = [a for a in multi if tier[a] != "rotating"]
    # Every non-rotating cycler keeps at least one hard identity; the rotating tier only network residue.
    assert _constant(rows[rows["actor_id"].isin(others)], HARD).all()
    assert rotating and _constant(rows[rows["actor_id"].isin(rotating)], RESIDUE).all()
    rotating_rows = _one_per_visit(rows[rows["actor_id"].isin(rotating)])
    assert not _constant(rotating_rows, ("device_id", "payment_fingerprint", "phone_digits")).any()
    # Naive cyclers' "new" emails mostly fold back to one mailbox once alias tricks are undone.
    naive = rows[rows["evasion"] == "naive"]
    folded = naive.assign(mailbox=naive["email"].map(_gmail_mailbox))
    per_fold = folded.groupby("actor_id").agg(raw=("email", "nunique"), boxes=("mailbox", "nunique"))
    assert (per_fold["boxes"] < per_fold["raw"]).mean() > 0.3


def test_leaked_codes_spread_to_many_identities_only_after_the_leak(
    history: SimulatedHistory, joined: pd.DataFrame
) -> None:
    first_day = history.events["ts"].min()
    after_devices = before_devices = 0
    after_rows = []
    for code, leaked_at in zip(history.leaks["promo_code"], history.leaks["leaked_at"], strict=True):
        uses = joined[joined["promo_code"] == code]
        before = uses[uses["ts"] < leaked_at]
        assert not before["is_abuse"].any()
        if leaked_at < first_day + pd.Timedelta(days=7) or leaked_at > first_day + pd.Timedelta(days=80):
            continue  # the week before (or after) the leak lies outside the window
        week = uses[(uses["ts"] >= leaked_at) & (uses["ts"] < leaked_at + pd.Timedelta(days=7))]
        week_before = before[before["ts"] >= leaked_at - pd.Timedelta(days=7)]
        after_devices += week["device_id"].nunique()
        before_devices += week_before["device_id"].nunique()
        after_rows.append(week)
    assert len(after_rows) >= 4
    # Summed over leaks (a small world has few attempts per code): the wave dwarfs the audience.
    assert after_devices > 3 * max(1, before_devices)
    assert pd.concat(after_rows)["is_abuse"].mean() > 0.6  # the partner's own audience keeps using it


def test_leaks_and_campaigns_run_through_the_whole_period(history: SimulatedHistory) -> None:
    days = (history.leaks["leaked_at"] - history.events["ts"].min().normalize()).dt.days
    assert days.min() <= 0 and days.max() >= SMALL.days - 16 and len(days) >= 6


def test_sample_stackers_write_one_door_several_ways(joined: pd.DataFrame) -> None:
    sent = _sent_in_full(joined[(joined["pattern"] == "sample_stacking") & joined["promo_valid"]])
    rows = _with_hard_keys(_one_per_visit(sent))
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
    referees = rows[rows["is_abuse"] & rows["promo_valid"]]  # a few mistyped or pasted an old code
    assert len(referees) > 20
    assert (referees["promo_type"] == "referral").all()
    assert referees["referrer_account_id"].notna().all()
    shares_hard, shares_residue = [], []
    by_account = {a: g for a, g in rows.groupby("account_id")}
    for referee in referees.itertuples():
        referrer_rows = by_account.get(str(referee.referrer_account_id))
        assert referrer_rows is not None and len(referrer_rows) > 0
        assert str(referee.account_id) != str(referee.referrer_account_id)
        columns = RESIDUE if referee.evasion == "rotating" else HARD
        hit = any(
            getattr(referee, c) is not None and getattr(referee, c) in set(referrer_rows[c].dropna())
            for c in columns
        )
        (shares_residue if referee.evasion == "rotating" else shares_hard).append(hit)
    # Optional fields (phone, device, local IP) are sometimes missing on the very attempt.
    assert np.mean(shares_hard) > 0.9
    assert shares_residue and np.mean(shares_residue) > 0.9


def test_intro_resetters_relink_through_something_durable(joined: pd.DataFrame) -> None:
    sent = _sent_in_full(joined[(joined["pattern"] == "intro_reset") & joined["promo_valid"]])
    rows = _with_hard_keys(_one_per_visit(sent))
    attempts = rows.groupby("actor_id").size()
    multi = rows[rows["actor_id"].isin(attempts[attempts >= 2].index)]
    assert multi["actor_id"].nunique() > 5
    assert (multi.groupby("actor_id")["email"].nunique() >= 2).all()
    assert _constant(multi, (*HARD, "ip24")).all()
    careful = multi[multi["evasion"].isin(["naive", "careful"])]
    assert _constant(careful, ("payment_fingerprint",)).all()  # the card on file stays
    assert (rows["promo_type"] == "intro_offer").all()


def test_wholesale_codes_are_abused_in_guest_checkout_and_used_honestly_by_segment(
    history: SimulatedHistory, joined: pd.DataFrame
) -> None:
    # Bots that guess a wholesale code are code spraying, counted there.
    wholesale = joined[(joined["promo_type"] == "wholesale") & (joined["pattern"] != "bot_spray")]
    abuse, legit = wholesale[wholesale["is_abuse"]], wholesale[~wholesale["is_abuse"]]
    assert (abuse["pattern"] == "wholesale_guest").all() and abuse["is_guest"].all()
    assert len(legit) > 0
    assert (legit["pattern"] == "legit_wholesale").all()
    assert set(legit.loc[~legit["is_guest"], "account_segment"]) <= {"wholesale", "vip"}
    # Eligible trade buyers sometimes forget to log in: the honest look-alike of the pattern.
    assert 0.03 < legit["is_guest"].mean() < 0.25


def test_bots_spray_invalid_codes_from_datacenter_tor_and_disposable_identities(
    history: SimulatedHistory, joined: pd.DataFrame
) -> None:
    import disposable_email_domains

    bots = joined[joined["pattern"] == "bot_spray"]
    assert (~bots["promo_valid"]).mean() > 0.7
    assert (bots.loc[~bots["promo_valid"], "outcome"] == "rejected").all()
    classic = bots[bots["evasion"] != "rotating"]
    domains = classic["email"].dropna().str.split("@").str[1]
    assert domains.isin(disposable_email_domains.blocklist).mean() > 0.5
    assert (
        (classic["device_id"].isna()) | (classic["device_id"] == "00000000-0000-0000-0000-000000000000")
    ).mean() > 0.2
    in_cloud = sum(_cloud_membership(bots["ip"].dropna().drop_duplicates().tolist()))
    tor = sum(_membership(bots["ip"].dropna().drop_duplicates().tolist(), history.tor_exits))
    assert tor > 0
    assert in_cloud > 0
    # Plausible bots fill every field and try leaked (valid) codes.
    plausible = bots[bots["evasion"] == "rotating"]
    assert len(plausible) > 10
    assert plausible["ship_line1"].notna().all() and plausible["promo_valid"].mean() > 0.4


def test_abusers_retry_minutes_after_a_challenge_with_other_cheap_fields(joined: pd.DataFrame) -> None:
    abuse = joined[joined["is_abuse"] & (joined["pattern"] != "bot_spray")].sort_values(["actor_id", "ts"])
    gap = abuse.groupby("actor_id")["ts"].diff().dt.total_seconds()
    prev_email = abuse.groupby("actor_id")["email"].shift()
    retries = abuse[(gap < 3600) & (abuse["email"] != prev_email)]
    assert len(retries) > 10


def test_legit_traffic_carries_real_store_noise(joined: pd.DataFrame) -> None:
    legit = joined[~joined["is_abuse"] & (joined["pattern"] != "bot_spray")]
    invalid = ~legit["promo_valid"]
    assert 0.02 <= invalid.mean() <= 0.04
    assert (legit.loc[invalid, "outcome"] == "rejected").all()
    email = legit["email"].dropna().str.strip().str.lower()
    assert 0.01 < email.str.contains("+", regex=False).mean() < 0.08
    assert email.str.endswith("@googlemail.com").mean() > 0.002
    differ = legit["bill_line1"].notna() & (legit["bill_postal_code"] != legit["ship_postal_code"])
    assert 0.07 < differ.mean() < 0.13
    for column in ("phone", "ship_line2", "device_id", "local_ip"):
        assert legit[column].isna().mean() > 0.02, column
    assert legit["user_agent"].notna().all()
    age = (legit["ts"] - legit["account_created_at"]).dt.total_seconds()
    fresh = legit[age < 3600]
    assert len(fresh) > 0.05 * len(legit)
    assert set(fresh["promo_type"]) >= {"welcome", "referral"}


def test_store_checkouts_leave_fields_out_for_abusers_and_honest_shoppers_alike(joined: pd.DataFrame) -> None:
    # A request that sends less must not be evidence of abuse in itself, or a model learns that it is.
    store = joined[joined["pattern"] != "bot_spray"]
    honest, abusive = store[~store["is_abuse"]], store[store["is_abuse"]]
    for column in ("email", "phone", "ship_line1", "bill_line1", "payment_fingerprint", "device_id"):
        honest_missing, abusive_missing = honest[column].isna().mean(), abusive[column].isna().mean()
        assert honest_missing > 0.01, column
        assert abusive_missing < 1.5 * honest_missing, column
    # An app sends the signed-in account and device alone.
    app = honest[honest["email"].isna()]
    assert app["account_id"].notna().all() and app["ship_line1"].isna().all()
    assert app["payment_fingerprint"].isna().all()


def test_legit_traps_look_suspicious_but_are_honest(history: SimulatedHistory, joined: pd.DataFrame) -> None:
    legit = joined[~joined["is_abuse"]]
    households = legit[legit["pattern"] == "legit_household"].merge(
        history.actors[["actor_id", "household_id"]], on="actor_id"
    )
    per_hh = households.groupby("household_id").agg(
        cards=("payment_fingerprint", "nunique"),
        people=("actor_id", "nunique"),
        welcome=("promo_type", lambda s: (s == "welcome").sum()),
    )
    assert ((per_hh["people"] >= 2) & (per_hh["cards"] >= 2)).sum() > 20
    assert (per_hh["welcome"] >= 2).sum() > 5  # several real members each claim the welcome offer
    cgnat = legit[legit["pattern"] == "legit_cgnat"]
    accounts_per_ip = cgnat.groupby("ip")["account_id"].nunique()
    assert accounts_per_ip.max() >= 50
    vpn_ips = legit.loc[legit["pattern"] == "legit_vpn", "ip"].dropna()
    flagged = np.asarray(_membership(vpn_ips.tolist(), history.proxies + history.tor_exits)) | np.asarray(
        _cloud_membership(vpn_ips.tolist())
    )
    assert flagged.mean() > 0.5
    tor_legit = _membership(legit["ip"].dropna().drop_duplicates().tolist(), history.tor_exits)
    assert sum(tor_legit) > 0
    traps = set(history.actors.loc[~history.actors["is_abuser"], "trap"])
    assert {"household", "cgnat", "vpn", "mover", "typo"} <= traps


def test_residential_ips_are_outside_every_cloud_range(joined: pd.DataFrame) -> None:
    homes = joined.loc[joined["pattern"] == "legit_repeat", "ip"].drop_duplicates().head(300)
    inside = _cloud_membership(homes.tolist())
    # Privacy relays and corporate egress are cloud addresses by design; home lines never are.
    assert np.mean(inside) < 0.1


def test_labels_arrive_late_and_are_biased_like_human_review(
    history: SimulatedHistory, joined: pd.DataFrame
) -> None:
    labeled = history.labels.merge(
        joined[["request_id", "ts", "is_abuse", "evasion", "pattern"]], on="request_id"
    )
    assert (labeled["label_ts"] > labeled["ts"]).all()
    abuse = joined[joined["is_abuse"]]
    unlabeled = ~abuse["request_id"].isin(history.labels["request_id"])
    assert 0.15 < unlabeled.mean() < 0.6
    assert {"abuse", "legit"} == set(labeled["label"])
    legit_labeled = labeled[~labeled["is_abuse"]]
    assert 0 < (legit_labeled["label"] == "abuse").mean() < 0.06
    # Hidden abuse is caught less often (bot farms aside: one farm is one actor with many rows).
    abuse = abuse[abuse["pattern"] != "bot_spray"]
    coverage = abuse.assign(labeled=~unlabeled).groupby("evasion")["labeled"].mean()
    assert coverage["naive"] > coverage["sophisticated"] > coverage["rotating"]
    # Look-alike honest shoppers are mislabeled more often than ordinary ones.
    lookalike = legit_labeled["pattern"].isin(["legit_household", "legit_vpn", "legit_mover", "legit_cgnat"])
    wrong = legit_labeled["label"] == "abuse"
    assert wrong[lookalike].mean() > wrong[legit_labeled["pattern"] == "legit_repeat"].mean()


def test_summary_has_one_row_per_pattern_and_a_total(history: SimulatedHistory) -> None:
    summary = summarize(history).set_index("pattern")
    assert summary.loc["total", "events"] == len(history.events)
    assert summary.drop(index="total")["events"].sum() == len(history.events)
    assert summary.loc["bot_spray", "abuse_rate"] == 1.0
    assert summary.loc["legit_repeat", "abuse_rate"] == 0.0


def _feed_entries(path: Path) -> list[tuple[str, datetime]]:
    out = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        entry, listed = line.split()
        ipaddress.ip_network(entry, strict=False)
        out.append((entry, datetime.strptime(listed, "%Y-%m-%dT%H:%M:%SZ")))
    return out


def test_write_history_writes_parquet_and_point_in_time_ip_feeds(
    history: SimulatedHistory, tmp_path: Path
) -> None:
    paths = write_history(history, tmp_path / "raw")
    assert {"events", "labels", "promotions", "actors", "truth", "tor_exits", "proxies"} <= set(paths)
    back = pd.read_parquet(paths["events"])
    validate_events(back)
    assert len(back) == len(history.events)
    assert "evasion" in pd.read_parquet(paths["truth"]).columns
    lines = paths["tor_exits"].read_text().splitlines()
    assert lines[0].startswith("#") and "simulated" in lines[0]
    date_line = next(line for line in lines if line.startswith("# date:"))
    feed_date = datetime.fromisoformat(date_line.split(":", 1)[1].strip())
    for name in ("tor_exits", "proxies"):
        entries = _feed_entries(paths[name])
        assert entries
        assert all(listed <= feed_date for _, listed in entries)
    assert any("/" in e for e, _ in _feed_entries(paths["proxies"]))


def test_feeds_are_partial_and_list_exits_around_their_first_use(history: SimulatedHistory) -> None:
    events = history.events[history.events["ip"].notna()]
    listed = dict(zip(history.tor_exits, pd.to_datetime(history.tor_listed_at, utc=True), strict=True))
    pool_prefixes = {e.rsplit(".", 1)[0] for e in history.tor_exits}
    used = events[events["ip"].str.rsplit(".", n=1).str[0].isin(pool_prefixes)]
    first_use = used.groupby("ip")["ts"].min()
    first_use = first_use[first_use.index.isin(set(history.tor_exits)) | ~first_use.index.isin(listed)]
    covered = first_use.index.isin(list(listed))
    assert 0.5 <= covered.mean() <= 0.9, covered.mean()
    after = [listed[ip] > t for ip, t in first_use.items() if ip in listed]
    assert 0.3 < np.mean(after) < 0.95  # many listed only after they were used here, some before


def test_new_bot_farm_drift_adds_a_profile_absent_before_start_day() -> None:
    drift = DriftConfig(kind="new_bot_farm", start_day=40)
    shifted = simulate_history(SimulationConfig(n_events=8_000, seed=5, drift=drift))
    cut = shifted.events["ts"].min().normalize() + pd.Timedelta(days=40)
    farm = shifted.events["user_agent"] == UA_DRIFT_FARM
    assert farm.sum() > 100
    assert (shifted.events.loc[farm, "ts"] >= cut).all()
    baseline = simulate_history(SimulationConfig(n_events=8_000, seed=5))
    assert not (baseline.events["user_agent"] == UA_DRIFT_FARM).any()


def test_new_leak_drift_adds_a_leaked_code_from_start_day() -> None:
    drift = DriftConfig(kind="new_leak", start_day=50)
    shifted = simulate_history(SimulationConfig(n_events=8_000, seed=5, drift=drift))
    code = shifted.leaks["promo_code"].iloc[-1]
    uses = shifted.events.merge(shifted.truth, on="request_id")
    uses = uses[uses["promo_code"] == code]
    cut = shifted.events["ts"].min().normalize() + pd.Timedelta(days=50)
    assert uses["is_abuse"].sum() > 100
    assert (uses.loc[uses["is_abuse"], "ts"] >= cut).all()


def test_seasonal_drift_raises_honest_traffic_after_start_day() -> None:
    base = simulate_history(SimulationConfig(n_events=8_000, seed=5))
    shifted = simulate_history(
        SimulationConfig(n_events=8_000, seed=5, drift=DriftConfig(kind="seasonal_legit", start_day=45))
    )

    def late_share(h: SimulatedHistory) -> float:
        cut = h.events["ts"].min().normalize() + pd.Timedelta(days=45)
        return float((h.events["ts"] >= cut).mean())

    assert late_share(shifted) > late_share(base) + 0.03


def test_small_short_worlds_still_work() -> None:
    tiny = simulate_history(SimulationConfig(n_events=1_000, days=14, seed=3))
    validate_events(tiny.events)
    assert tiny.truth["is_abuse"].any() and (~tiny.truth["is_abuse"]).any()


def test_public_text_helpers_keep_their_contract() -> None:
    import random

    assert format_phone("4155550123", 1) == "(415) 555 0123"
    assert address_variant(123, "Main", 0, "4B", 3) == ("123 Main, Apt 4-B", None)
    assert address_variant(123, "Main", 0, "12", 0) == ("123 Main St", "Apt 12")
    variant = gmail_variant("jane.doe", random.Random(1), 3)
    assert variant.lower().split("@")[1] in ("gmail.com", "googlemail.com")


def test_bad_config_is_rejected_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="abuse_share"):
        SimulationConfig(abuse_share=0.9)
    with pytest.raises(ValueError, match="start_day"):
        SimulationConfig(days=30, drift=DriftConfig(kind="new_leak", start_day=45))
    with pytest.raises(ValueError, match="evasion_mix"):
        SimulationConfig(evasion_mix=(0.5, 0.5, 0.5, 0.5))
    assert SimulationConfig(evasion_mix=(0.5, 0.3, 0.2)).evasion_mix == (0.5, 0.3, 0.2)
