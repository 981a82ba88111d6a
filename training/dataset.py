"""The training frame: one row per labeled attempt, its point-in-time features and request-time flags.

``assemble_training_frame`` joins the identity-resolved attempts with their late-arriving labels and the
Feast historical features (through a callable, so Feast stays at the edge). ``validate_training_frame``
checks the result with a Great Expectations suite built in code and fails with a readable report
before a model is trained on broken data. ``synthetic_training_frame`` builds a small frame with the
same shape from numpy alone, for tests, benchmarks and notebooks that must not need the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features import definitions
from features.context import CONTEXT_COLUMNS, PROMO_TYPE_FLAGS

log = logging.getLogger(__name__)

#: Request-time identity flags that become 0/1 model features (``ip_provider`` is a label, not a feature).
FLAG_COLUMNS: tuple[str, ...] = (
    "email_missing",
    "email_invalid",
    "email_is_alias",
    "email_disposable",
    "email_free_provider",
    "phone_missing",
    "phone_invalid",
    "phone_voip",
    "address_missing",
    "address_unparsed",
    "ship_bill_mismatch",
    "device_missing",
    "ip_missing",
    "ip_is_datacenter",
    "ip_is_tor",
    "ip_is_proxy_or_vpn",
)

#: Simulator ground truth: used to slice evaluation, never a model input.
EVALUATION_COLUMNS: tuple[str, ...] = ("actor_id", "pattern", "is_abuse_true", "evasion", "trap")

#: Columns every training frame carries besides the features.
BASE_COLUMNS: tuple[str, ...] = (
    "request_id",
    "ts",
    "label",
    "label_ts",
    "promo_type",
    "promo_code",
    "discount_value",
)

ABUSE_PATTERNS: tuple[str, ...] = ("welcome_cycling", "referral_self", "household_stacking", "code_spray")
TRAPS: tuple[str, ...] = ("household", "cgnat", "vpn")


class TrainingDataError(ValueError):
    """The training frame broke an expectation; the message is a readable report of every failure."""


#: Context columns (:mod:`features.context`) that are counts; the others are 0/1 flags.
_CONTEXT_COUNTS: tuple[str, ...] = (
    "referrer_shared_hard_kinds", "person_linked_evidence", "person_accounts", "person_emails",
    "person_code_attempts", "person_type_attempts", "household_accounts",
)


def feature_kind(name: str) -> str:
    """Kind of a model feature: a catalog kind (count, distinct, age, share, labels) or ``flag``."""
    if name in FLAG_COLUMNS:
        return "flag"
    if name in CONTEXT_COLUMNS:
        return "count" if name in _CONTEXT_COUNTS else "flag"
    view_name, _, feat = name.partition("__")
    for f in definitions.view(view_name).features:
        if f.name == feat:
            return f.kind
    raise KeyError(f"unknown feature {name!r}")


def model_feature_names(feast_features: Sequence[str] | None = None) -> list[str]:
    """The model's input order: the Feast features of the service, the request-time flags, the context.

    The context columns (promotion type, guest checkout, eligibility, referral links) come from
    :mod:`features.context`, computed the same way for a request and for a keys frame.
    """
    feats = list(definitions.feature_names() if feast_features is None else feast_features)
    return feats + [f for f in (*FLAG_COLUMNS, *CONTEXT_COLUMNS) if f not in feats]


def feature_summary(frame: pd.DataFrame, feature_names: Sequence[str]) -> pd.DataFrame:
    """One row per present feature: kind, non-null count, and its min/max where the kind bounds them.

    Bounds are checked on this summary rather than per column of the full frame: each Great
    Expectations expectation costs ~70 ms of fixed overhead, and 155 features x 3 checks would make
    validation slower than training.
    """
    rows = []
    for name in feature_names:
        if name not in frame.columns:
            continue
        kind = feature_kind(name)
        col = pd.to_numeric(frame[name], errors="coerce")
        lo, hi = (float(col.min()), float(col.max())) if col.notna().any() else (np.nan, np.nan)
        rows.append(
            {
                "feature": name,
                "kind": kind,
                "non_null": int(col.notna().sum()),
                "count_min": lo if kind in ("count", "distinct", "labels") else np.nan,
                "bounded_min": lo if kind in ("share", "flag") else np.nan,
                "bounded_max": hi if kind in ("share", "flag") else np.nan,
                "below_zero": int((col < 0).sum()),
            }
        )
    return pd.DataFrame(
        rows, columns=["feature", "kind", "non_null", "count_min", "bounded_min", "bounded_max", "below_zero"]
    )


def _row_suite(feature_names: Sequence[str], present: set[str]) -> Any:
    import great_expectations as gx

    exp = gx.expectations
    required = [*BASE_COLUMNS, *feature_names]
    items: list[Any] = [exp.ExpectTableColumnsToMatchSet(column_set=required, exact_match=False)]
    if "label" in present:
        items.append(exp.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]))
        items.append(exp.ExpectColumnValuesToNotBeNull(column="label"))
    if "ts" in present:
        items.append(exp.ExpectColumnValuesToNotBeNull(column="ts"))
    if "request_id" in present:
        items.append(exp.ExpectColumnValuesToBeUnique(column="request_id"))
    # Passing the list at construction skips add_expectation's quadratic duplicate check.
    return gx.ExpectationSuite(name="training_rows", expectations=items)


def _feature_suite() -> Any:
    import great_expectations as gx

    exp = gx.expectations
    items = [
        exp.ExpectColumnValuesToBeBetween(column="count_min", min_value=0),
        exp.ExpectColumnValuesToBeBetween(column="bounded_min", min_value=0),
        exp.ExpectColumnValuesToBeBetween(column="bounded_max", max_value=1),
        # A feature that is null on every row means a broken join, not a quiet entity.
        exp.ExpectColumnValuesToBeBetween(column="non_null", min_value=1),
    ]
    return gx.ExpectationSuite(name="training_features", expectations=items)


def _describe_failure(result: Any) -> str:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "column", "column_set")}
    column = cfg.kwargs.get("column")
    res = dict(result.result or {})
    parts = [cfg.type]
    if cfg.type == "expect_table_columns_to_match_set":
        details = res.get("details", {}).get("mismatched", {})
        missing = details.get("missing") or sorted(
            set(cfg.kwargs["column_set"]) - set(res.get("observed_value", []))
        )
        return f"{cfg.type}: missing column(s) {missing}"
    index = res.get("partial_unexpected_index_list") or []
    features = [i["feature"] for i in index if isinstance(i, dict) and "feature" in i]
    if features:
        # Summary checks: name the offending features, not the summary column.
        parts.append(f"feature column(s) {features[:5]}")
        parts.append(f"{column} observed {res.get('partial_unexpected_list', [])[:5]}, expected {kwargs}")
    else:
        parts.append(f"column {column!r}")
        if kwargs:
            parts.append(f"expected {kwargs}")
        if "unexpected_count" in res:
            parts.append(f"{res['unexpected_count']} of {res.get('element_count', '?')} rows unexpected")
            sample = res.get("partial_unexpected_list") or []
            if sample and cfg.type != "expect_column_values_to_not_be_null":
                parts.append(f"e.g. {sample[:5]}")
        elif "observed_value" in res:
            parts.append(f"observed {res['observed_value']!r}")
    exc = result.exception_info or {}
    if exc.get("raised_exception"):
        parts.append(f"error: {str(exc.get('exception_message'))[:200]}")
    return "; ".join(parts)


def validate_training_frame(frame: pd.DataFrame, feature_names: Sequence[str]) -> None:
    """Validate a training frame with Great Expectations; raise TrainingDataError listing every failure.

    Checks: base and feature columns exist, label in {0, 1}, counts >= 0, shares and flags in [0, 1],
    ts not null, request_id unique, no feature null on every row.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("training")
    rows = source.add_dataframe_asset("rows").add_batch_definition_whole_dataframe("whole")
    feats = source.add_dataframe_asset("features").add_batch_definition_whole_dataframe("whole")
    results = [
        rows.get_batch(batch_parameters={"dataframe": frame}).validate(
            _row_suite(feature_names, set(frame.columns)), result_format="SUMMARY"
        ),
        feats.get_batch(batch_parameters={"dataframe": feature_summary(frame, feature_names)}).validate(
            _feature_suite(),
            result_format={"result_format": "SUMMARY", "unexpected_index_column_names": ["feature"]},
        ),
    ]
    failures = [_describe_failure(r) for res in results for r in res.results if not r.success]
    if not failures:
        return
    report = "\n".join(f"  - {line}" for line in failures)
    raise TrainingDataError(f"training frame failed {len(failures)} expectation(s):\n{report}")


#: Label source of attempts that no one labeled abuse within the maturity window (never written to disk).
PRESUMED_LEGIT = "presumed_legit"


def presume_unlabeled_legit(
    keys: pd.DataFrame, labels: pd.DataFrame, *, maturity_days: float
) -> pd.DataFrame:
    """Labels plus a ``legit`` label for every unlabeled attempt, arriving ``maturity_days`` after it.

    Reviews label only a sample of honest attempts, so the labeled set is mostly abuse while real
    traffic is mostly honest; a model calibrated on it scores everyone high and its cost-based thresholds
    send honest shoppers to verification. As in chargeback-style fraud data, an attempt nobody flagged
    within the maturity window counts as legit from then on (``label_ts = ts + maturity``), so the
    time split keeps it out of training until it would have been known. Unlabeled abuse becomes label
    noise, which the simulator's ground truth lets the evaluation measure.
    """
    if maturity_days <= 0:
        raise ValueError(f"maturity_days: must be positive, got {maturity_days}")
    unlabeled = keys.loc[~keys["request_id"].isin(labels["request_id"]), ["request_id", "ts"]]
    presumed = pd.DataFrame(
        {
            "request_id": unlabeled["request_id"].to_numpy(),
            "label": "legit",
            "label_source": PRESUMED_LEGIT,
            "label_ts": pd.to_datetime(unlabeled["ts"], utc=True) + pd.Timedelta(days=maturity_days),
        }
    )
    base = labels[["request_id", "label", "label_source", "label_ts"]]
    return pd.concat([base, presumed], ignore_index=True)


#: ``DataFrame.attrs`` key of the training frame: the labeled attempts it was drawn from (its own length
#: unless it is a sample), which the training run logs.
LABELED_ATTEMPTS = "labeled_attempts"


def sampled_from(frame: pd.DataFrame) -> int | None:
    """The labeled attempts ``frame`` was drawn from when it is a sample of them, else None."""
    labeled = int(frame.attrs.get(LABELED_ATTEMPTS, len(frame)))
    return labeled if labeled > len(frame) else None


def sample_attempts(attempts: pd.DataFrame, max_rows: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``max_rows`` of ``attempts`` (all of them when None), drawn uniformly, in time order.

    A uniform draw keeps the base rate and each window's share of the rows, so every figure measured on
    the sample estimates the same figure on the whole without weights; only its precision drops.
    """
    if max_rows is None or len(attempts) <= max_rows:
        return attempts
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    drawn = attempts.sample(n=max_rows, random_state=seed)
    return drawn.sort_values("ts", kind="stable").reset_index(drop=True)


def assemble_training_frame(
    keys: pd.DataFrame,
    labels: pd.DataFrame,
    historical: Callable[[pd.DataFrame], pd.DataFrame],
    truth: pd.DataFrame | None = None,
    *,
    max_rows: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Join labeled attempts with their point-in-time features, flags, labels and (optional) truth.

    ``keys`` is the identity-resolved attempt frame (request_id, ts, promo fields, ``*_key`` columns,
    flags); ``labels`` the label contract frame; ``historical`` receives the entity frame (join keys,
    ``event_timestamp``, ``request_id``) and returns the features by ``request_id``. With ``max_rows``
    a uniform sample of that many labeled attempts (:func:`sample_attempts`, seeded by ``seed``) is
    drawn before the retrieval, so the retrieval and the frame hold at most ``max_rows`` rows whatever
    the history's size; ``frame.attrs[LABELED_ATTEMPTS]`` keeps how many labeled attempts there were.
    """
    for name, frame, needed in (
        ("keys", keys, ("request_id", "ts", "promo_code", "promo_type", "discount_value")),
        ("labels", labels, ("request_id", "label", "label_ts")),
    ):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise TrainingDataError(f"{name} frame is missing column(s) {missing}")
    lab = labels[["request_id", "label", "label_ts"]].drop_duplicates("request_id", keep="last")
    labeled = keys.merge(lab, on="request_id", how="inner")
    attempts = sample_attempts(labeled, max_rows, seed)
    join_keys = [c for c in attempts.columns if c.endswith("_key")]
    entity_df = attempts[["request_id", *join_keys, *definitions.PROMOTION_KEYS]].copy()
    entity_df["event_timestamp"] = pd.to_datetime(attempts["ts"], utc=True)
    feats = historical(entity_df)
    if "request_id" not in feats.columns:
        raise TrainingDataError("historical features came back without a request_id column")
    feature_cols = [c for c in feats.columns if c not in entity_df.columns]
    out = attempts.merge(feats[["request_id", *feature_cols]], on="request_id", how="left")
    out = out.drop(columns=[c for c in join_keys if c in out.columns])
    out["label"] = (out["label"].astype(str) == "abuse").astype("int64")
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    out["label_ts"] = pd.to_datetime(out["label_ts"], utc=True)
    for flag in FLAG_COLUMNS:
        if flag in out.columns:
            # Missing flag = not raised; eq(True) also maps None/NaN to 0 without object downcasting.
            out[flag] = out[flag].eq(True).astype("int64")
    for col in (*feature_cols, *(c for c in CONTEXT_COLUMNS if c in out.columns)):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    if truth is not None:
        cols = [c for c in EVALUATION_COLUMNS if c in truth.columns]
        out = out.merge(
            truth[["request_id", *cols]].drop_duplicates("request_id"), on="request_id", how="left"
        )
    out = out.sort_values("ts", kind="stable").reset_index(drop=True)
    out.attrs[LABELED_ATTEMPTS] = len(labeled)
    return out


def synthetic_training_frame(n_rows: int = 4000, *, seed: int = 0, days: int = 120) -> pd.DataFrame:
    """A synthetic training frame with the contract's columns, built from numpy alone.

    Abuse (about 6 %) raises a few hard-identity counts and flags; legit trap actors (households,
    carrier-grade NAT, VPN users) share some of those signals so false positives can be measured.
    Labels arrive 0-20 days after the event; 2 % of labels are flipped like real review noise.
    """
    rng = np.random.default_rng(seed)
    n = n_rows
    start = pd.Timestamp("2026-01-01", tz="UTC")
    ts = start + pd.to_timedelta(np.sort(rng.uniform(0, days * 86_400, n)), unit="s")
    abuse = rng.random(n) < 0.06
    none = np.full(n, None, dtype=object)
    pattern = np.where(abuse, rng.choice(ABUSE_PATTERNS, n).astype(object), none)
    trap = np.where(~abuse & (rng.random(n) < 0.08), rng.choice(TRAPS, n).astype(object), none)
    actor = np.where(abuse, rng.integers(0, 60, n), 1000 + rng.integers(0, n, n)).astype(str)
    evasion = abuse & (rng.random(n) < 0.15)
    frame: dict[str, Any] = {
        "request_id": [f"r{i:08d}" for i in range(n)],
        "ts": ts,
        "promo_type": rng.choice(["welcome", "referral", "free_sample", "sitewide"], n),
        "promo_code": rng.choice([f"CODE{i}" for i in range(30)], n),
    }
    frame["discount_value"] = np.round(rng.choice([5.0, 10.0, 25.0, 50.0], n), 2)
    strength = np.where(abuse, np.where(evasion, 0.8, 3.0), 0.0)
    for name in definitions.feature_names():
        kind = feature_kind(name)
        if kind in ("count", "distinct"):
            lam = 0.3 + (strength if _is_signal(name) else 0.0)
            frame[name] = rng.poisson(lam, n).astype("float64")
        elif kind == "labels":
            frame[name] = rng.poisson(np.where(abuse, 0.4, 0.02)).astype("float64")
        elif kind == "share":
            frame[name] = np.clip(rng.beta(2, 5, n) + 0.3 * abuse, 0, 1)
        else:
            age = rng.exponential(np.where(abuse, 3.0, 60.0))
            frame[name] = np.where(rng.random(n) < 0.2, np.nan, age)
    for flag in FLAG_COLUMNS:
        p = np.full(n, 0.03)
        if flag in ("email_is_alias", "email_disposable", "ip_is_datacenter"):
            p = np.where(abuse & ~evasion, 0.5, 0.03)
        if flag == "ip_is_proxy_or_vpn":
            p = np.where(abuse | (trap == "vpn"), 0.6, 0.03)
        frame[flag] = (rng.random(n) < p).astype("int64")
    ptype = np.asarray(frame["promo_type"], dtype=object)
    guest = rng.random(n) < 0.2
    frame["guest_checkout"] = guest.astype("int64")
    for t in PROMO_TYPE_FLAGS:
        frame[f"promo_is_{t}"] = (ptype == t).astype("int64")
    frame["one_per_customer"] = np.isin(ptype, ["welcome", "referral", "free_sample"]).astype("int64")
    frame["segment_ineligible"] = np.zeros(n, dtype="int64")
    referral = ptype == "referral"
    shared = rng.poisson(np.where(abuse, 1.5, 0.05))
    frame["referrer_shared_hard_kinds"] = np.where(referral, shared, 0).astype("float64")
    frame["referrer_is_account"] = np.zeros(n, dtype="int64")
    # The identity graph: an abuser is more often a person seen before, with more accounts and earlier
    # attempts at the same kind of promotion; an honest household has several accounts too. Drawn from
    # a generator of their own so the other columns stay what they were.
    g = np.random.default_rng(seed + 1)
    linked = g.random(n) < np.where(abuse & ~evasion, 0.25, 0.08)
    frame["person_linked_evidence"] = np.where(linked, 2.0 + (g.random(n) < 0.3), 0.0)
    frame["person_accounts"] = 1.0 + np.where(linked, g.poisson(np.where(abuse, 2.0, 0.2)), 0)
    frame["person_emails"] = np.maximum(frame["person_accounts"] - (g.random(n) < 0.2), 1.0)
    frame["person_code_attempts"] = np.where(linked, g.poisson(np.where(abuse, 0.8, 0.05)), 0).astype(float)
    frame["person_type_attempts"] = frame["person_code_attempts"] + np.where(
        linked & abuse, g.poisson(1.0, n), 0
    )
    frame["household_accounts"] = 1.0 + g.poisson(np.where(trap == "household", 3.0, 0.3))
    frame["referrer_same_person"] = (referral & abuse & (g.random(n) < 0.5)).astype("float64")
    frame["referrer_same_household"] = np.maximum(frame["referrer_same_person"], 0.0)
    out = pd.DataFrame(frame)
    # Traps share a signal with abuse but come from legit shoppers.
    out.loc[trap == "household", "household_stats__distinct_accounts_30d"] += rng.poisson(3, n)[
        trap == "household"
    ]
    out.loc[trap == "cgnat", "network_stats__distinct_accounts_24h"] += rng.poisson(6, n)[trap == "cgnat"]
    device_missing = out["device_missing"].to_numpy() == 1
    device_cols = [c for c in out.columns if c.startswith(("device_stats__", "device_code_stats__"))]
    out.loc[device_missing, device_cols] = np.nan
    flip = rng.random(n) < 0.02
    out["label"] = (abuse ^ flip).astype("int64")
    out["label_ts"] = out["ts"] + pd.to_timedelta(rng.uniform(0, 20 * 86_400, n), unit="s")
    out["actor_id"] = actor
    out["pattern"] = pattern
    out["is_abuse_true"] = abuse
    out["evasion"] = evasion
    out["trap"] = trap
    return out


_SIGNAL_SUFFIXES = ("distinct_accounts_24h", "distinct_accounts_30d", "distinct_emails_30d", "attempts_1h")
_SIGNAL_VIEWS = ("device_stats", "payment_stats", "household_stats", "code_stats", "device_code_stats")


def _is_signal(name: str) -> bool:
    view_name, _, feat = name.partition("__")
    return (view_name in _SIGNAL_VIEWS and feat in _SIGNAL_SUFFIXES) or name.endswith(
        "code_stats__redeemed_total"
    )
