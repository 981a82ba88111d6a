"""Drift reports for the fraud team: how today's scoring compares with the champion's reference window.

Both sides are *scoring frames*: one row per scored request with ``score`` (0-100), ``band``,
``decision``, ``fallback``, ``top_signals``, ``promo_type``, ``campaign`` (falls back to
``promo_code``), optional ``label``/``label_ts``/``pattern``, ``ts`` and the model's feature columns.
The reference is the champion's scored training/test window; the current side is recent rows of the
service's scoring log or a batch of events scored offline.

Pure functions compute everything (:func:`compute_drift`, :func:`build_suite`, :func:`validate_current`);
:func:`write_report` is the only edge that touches disk. :func:`run_drift` is the one call for the CLI
and notebooks, and :func:`exit_code` turns the overall status into the process exit status that a
scheduler alerts on:

* ``0``: green, nothing moved beyond sampling noise;
* ``1``: amber, something moved and a person should look this week;
* ``2``: red, the model sees a different world than it was trained on; look today.

Statuses deliberately need *both* a statistically significant change *and* a minimum effect size: on
the hundreds of thousands of rows a busy store scores per day every p-value is tiny, and a report that is
always amber teaches the fraud team to ignore it.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

Status = Literal["green", "amber", "red"]

_SEVERITY: dict[str, int] = {"green": 0, "amber": 1, "red": 2}
DECISIONS: tuple[str, ...] = ("allow", "watch", "verify", "refuse")
BANDS: tuple[str, ...] = ("clean", "low", "medium", "high")
REQUIRED_COLUMNS: tuple[str, ...] = ("score", "band", "decision")

# Plain words for the summary; the fraud team reads sentences, not column names.
_DECISION_WORDS: dict[str, str] = {
    "allow": "allowed",
    "watch": "put on watch",
    "verify": "sent to verification",
    "refuse": "refused",
}


@dataclass(frozen=True)
class DriftThresholds:
    """When a change turns amber or red. Every default can be overridden per run.

    * ``psi_amber``/``psi_red``: population stability index on quantile bins of the reference
      (0.1 = worth a look, 0.25 = the population has changed; the industry's usual cut-offs).
    * ``p_amber``/``p_red``: KS (continuous) or chi-square (binary, low cardinality) p-values, counted
      only when the effect is at least ``min_effect_psi`` PSI or ``min_effect_ks`` KS statistic, so that
      big samples do not flag trivial shifts. ``min_effect_ks`` is 0.1 rather than 0.05 because with
      100+ features at a few thousand rows a KS statistic of 0.05 is sampling noise for some feature in
      almost every run.
    * ``share_amber_pp``/``share_red_pp``: percentage-point change of a decision, band, signal or
      per-promotion verify/refuse share (also needs a two-proportion test below ``p_amber``,
      Bonferroni-adjusted for the number of shares compared in the same table).
    * ``fallback_amber``/``fallback_red``: share of current requests answered by the rules fallback.
    * ``missing_amber_pp``/``missing_red_pp``: percentage-point change of a feature's missing rate.
    * ``psi_bins``: quantile bins for PSI (NaN always gets a bin of its own).
    * ``max_categories``: features with at most this many distinct values are tested with chi-square.
    * ``min_group_rows``: promotions/campaigns with fewer rows on either side are shown, never flagged.
    """

    psi_amber: float = 0.1
    psi_red: float = 0.25
    p_amber: float = 0.01
    p_red: float = 0.001
    min_effect_psi: float = 0.05
    min_effect_ks: float = 0.1
    share_amber_pp: float = 3.0
    share_red_pp: float = 6.0
    fallback_amber: float = 0.01
    fallback_red: float = 0.05
    missing_amber_pp: float = 5.0
    missing_red_pp: float = 15.0
    psi_bins: int = 10
    max_categories: int = 10
    min_group_rows: int = 100

    def __post_init__(self) -> None:
        pairs = (
            ("psi", self.psi_amber, self.psi_red),
            ("share_pp", self.share_amber_pp, self.share_red_pp),
            ("fallback", self.fallback_amber, self.fallback_red),
            ("missing_pp", self.missing_amber_pp, self.missing_red_pp),
        )
        for name, amber, red in pairs:
            if not 0 <= amber <= red:
                raise ValueError(f"thresholds.{name}: amber ({amber}) must be >= 0 and <= red ({red})")
        if not 0 < self.p_red <= self.p_amber < 1:
            raise ValueError(f"thresholds.p_red ({self.p_red}) must be in (0, p_amber={self.p_amber}]")
        if self.psi_bins < 2:
            raise ValueError(f"thresholds.psi_bins must be at least 2, got {self.psi_bins}")


@dataclass(frozen=True)
class ScoreDrift:
    """The score distribution then vs now; ``bins`` are 10-point buckets shared by both shares lists."""

    psi: float
    ks_statistic: float
    p_value: float
    mean_reference: float
    mean_current: float
    bins: list[str]
    share_reference: list[float]
    share_current: list[float]
    status: Status


@dataclass(frozen=True)
class ShareChange:
    """One category's share of requests then vs now (a decision, a band or a top signal)."""

    name: str
    share_reference: float
    share_current: float
    delta_pp: float
    p_value: float
    status: Status


@dataclass(frozen=True)
class FallbackDrift:
    """Share of requests the rules fallback answered (the model or features were unavailable)."""

    rate_reference: float
    rate_current: float
    status: Status


@dataclass(frozen=True)
class GroupDrift:
    """Score mean and verify/refuse share of one promotion type or campaign, then vs now."""

    dimension: str
    value: str
    n_reference: int
    n_current: int
    mean_score_reference: float
    mean_score_current: float
    flagged_share_reference: float
    flagged_share_current: float
    delta_pp: float
    status: Status


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one model feature; ``bins``/``share_*`` are the PSI bins (plotted for the top features)."""

    name: str
    kind: Literal["continuous", "categorical"]
    psi: float
    test: Literal["ks", "chi2"]
    statistic: float
    p_value: float
    missing_reference: float
    missing_current: float
    status: Status
    reasons: list[str]
    bins: list[str]
    share_reference: list[float]
    share_current: list[float]


@dataclass(frozen=True)
class PatternRate:
    """Abuse rate among labeled rows of one pattern (or of everything when no pattern column)."""

    pattern: str
    labeled_reference: int
    labeled_current: int
    abuse_rate_reference: float
    abuse_rate_current: float


@dataclass(frozen=True)
class LabelSummary:
    """How far labels have arrived, and the abuse rate where they have."""

    available: bool
    labeled_share_reference: float
    labeled_share_current: float
    median_delay_hours_reference: float
    median_delay_hours_current: float
    by_pattern: list[PatternRate]


@dataclass(frozen=True)
class Violation:
    """One failed data-validation expectation on the current window."""

    expectation: str
    column: str
    observed: str
    unexpected_percent: float


@dataclass(frozen=True)
class DriftResult:
    """Everything a drift report shows; JSON-able through :func:`result_to_dict`."""

    status: Status
    summary: list[str]
    generated_at: str
    n_reference: int
    n_current: int
    score: ScoreDrift
    decisions: list[ShareChange]
    bands: list[ShareChange]
    fallback: FallbackDrift
    groups: list[GroupDrift]
    features: list[FeatureDrift]
    signals: list[ShareChange]
    labels: LabelSummary
    thresholds: DriftThresholds
    violations: list[Violation] = field(default_factory=list)


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put the report (``latest.*`` copies sit beside them)."""

    html: Path
    json: Path


# ---------------------------------------------------------------------------------------------------
# statistics


def _worst(statuses: Iterable[str]) -> Status:
    worst = max((_SEVERITY[s] for s in statuses), default=0)
    return ("green", "amber", "red")[worst]  # type: ignore[return-value]


def _level(value: float, amber: float, red: float) -> Status:
    if not math.isfinite(value):
        return "green"
    if value >= red:
        return "red"
    if value >= amber:
        return "amber"
    return "green"


def psi_from_shares(reference: Sequence[float], current: Sequence[float], floor: float = 1e-4) -> float:
    """Population stability index between two share vectors over the same bins.

    Empty bins are floored so that a bin that appears only now counts heavily instead of dividing by zero.
    """
    ref = np.clip(np.asarray(reference, dtype=float), floor, None)
    cur = np.clip(np.asarray(current, dtype=float), floor, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def quantile_cuts(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges from the reference's quantiles; duplicate edges collapse for discrete features."""
    values = reference[np.isfinite(reference)]
    if values.size == 0:
        return np.array([], dtype=float)
    qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    # A cut at the minimum would leave an always-empty first bin.
    return np.unique(qs[qs > values.min()]) if values.size else qs


def binned_shares(
    reference: np.ndarray, current: np.ndarray, bins: int
) -> tuple[list[str], list[float], list[float]]:
    """Shares of reference and current values per quantile bin of the reference, NaN as its own bin."""
    cuts = quantile_cuts(reference, bins)
    labels = _bin_labels(cuts)
    out: list[list[float]] = []
    for values in (reference, current):
        finite = np.isfinite(values)
        idx = np.searchsorted(cuts, values[finite], side="right")
        counts = np.bincount(idx, minlength=len(cuts) + 1).astype(float)
        counts = np.append(counts, float((~finite).sum()))
        out.append((counts / max(values.size, 1)).tolist())
    labels.append("missing")
    return labels, out[0], out[1]


def _fmt_num(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e6 else f"{x:.3g}"


def _bin_labels(cuts: np.ndarray) -> list[str]:
    if cuts.size == 0:
        return ["all"]
    labels = [f"< {_fmt_num(cuts[0])}"]
    labels += [f"{_fmt_num(lo)} to < {_fmt_num(hi)}" for lo, hi in itertools.pairwise(cuts)]
    labels.append(f">= {_fmt_num(cuts[-1])}")
    return labels


def _test_status(p_value: float, effect_ok: bool, th: DriftThresholds) -> Status:
    if not effect_ok or not math.isfinite(p_value):
        return "green"
    if p_value < th.p_red:
        return "red"
    if p_value < th.p_amber:
        return "amber"
    return "green"


def _two_proportion_p(k1: float, n1: int, k2: float, n2: int) -> float:
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if k1 / n1 == k2 / n2 else 0.0
    z = (k2 / n2 - k1 / n1) / se
    return float(2 * stats.norm.sf(abs(z)))


def _share_change(
    name: str, k_ref: float, n_ref: int, k_cur: float, n_cur: int, th: DriftThresholds, family: int = 1
) -> ShareChange:
    """Share then vs now; the p-value is Bonferroni-adjusted for the ``family`` of shares compared.

    Without the adjustment, comparing twenty campaigns at p < 0.01 turns one report in five amber on
    pure noise.
    """
    s_ref = k_ref / n_ref if n_ref else 0.0
    s_cur = k_cur / n_cur if n_cur else 0.0
    delta = 100 * (s_cur - s_ref)
    p = min(1.0, _two_proportion_p(k_ref, n_ref, k_cur, n_cur) * max(family, 1))
    status = _level(abs(delta), th.share_amber_pp, th.share_red_pp) if p < th.p_amber else "green"
    return ShareChange(name, s_ref, s_cur, delta, p, status)


# ---------------------------------------------------------------------------------------------------
# input checks


def _check_frame(frame: pd.DataFrame, side: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{side}: expected a pandas DataFrame, got {type(frame).__name__}")
    if frame.empty:
        raise ValueError(f"{side}: the scoring frame has no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{side}: missing required column(s) {', '.join(missing)}")
    score = pd.to_numeric(frame["score"], errors="coerce")
    bad = score.isna() & frame["score"].notna()
    if bad.any():
        raise ValueError(
            f"{side}.score: {int(bad.sum())} non-numeric value(s), e.g. {frame['score'][bad].iloc[0]!r}"
        )
    out = frame.copy()
    out["score"] = score.astype(float)
    for col in ("band", "decision"):
        out[col] = out[col].astype("string").str.lower()
    return out


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    values = frame[column]
    if values.dtype == bool:
        values = values.astype(float)
    out = pd.to_numeric(values, errors="coerce")
    return out.to_numpy(dtype=float, na_value=np.nan)


def parse_signals(value: Any) -> list[str]:
    """Signal names from a list, a tuple, a numpy array or a JSON string of a list; anything else is none."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            # A bare comma-separated string is what a CSV export of the log gives.
            return [s.strip() for s in text.split(",") if s.strip()]
        value = parsed
    if isinstance(value, dict):
        return [str(value.get("name"))] if value.get("name") else []
    if isinstance(value, list | tuple | np.ndarray):
        names: list[str] = []
        for item in value:
            if isinstance(item, dict):
                if item.get("name"):
                    names.append(str(item["name"]))
            elif item is not None and not (isinstance(item, float) and math.isnan(item)):
                names.append(str(item))
        return names
    return []


# ---------------------------------------------------------------------------------------------------
# the pieces of compute_drift


def score_drift(reference: pd.DataFrame, current: pd.DataFrame, th: DriftThresholds) -> ScoreDrift:
    """PSI over 10-point score buckets plus a KS test on the raw scores."""
    ref = reference["score"].to_numpy(dtype=float)
    cur = current["score"].to_numpy(dtype=float)
    edges = np.arange(0, 101, 10, dtype=float)
    labels = [f"{int(lo)}-{int(lo) + 9}" for lo in edges[:-1]]
    labels[-1] = "90-100"

    def shares(values: np.ndarray) -> list[float]:
        v = values[np.isfinite(values)]
        idx = np.clip(np.floor(v / 10), 0, 9).astype(int)
        return (np.bincount(idx, minlength=10) / max(v.size, 1)).tolist()

    s_ref, s_cur = shares(ref), shares(cur)
    psi = psi_from_shares(s_ref, s_cur)
    ks = stats.ks_2samp(ref[np.isfinite(ref)], cur[np.isfinite(cur)])
    statistic, p = float(ks.statistic), float(ks.pvalue)
    effect = psi >= th.min_effect_psi or statistic >= th.min_effect_ks
    status = _worst([_level(psi, th.psi_amber, th.psi_red), _test_status(p, effect, th)])
    return ScoreDrift(
        psi=psi,
        ks_statistic=statistic,
        p_value=p,
        mean_reference=float(np.nanmean(ref)),
        mean_current=float(np.nanmean(cur)),
        bins=labels,
        share_reference=s_ref,
        share_current=s_cur,
        status=status,
    )


def mix_drift(
    reference: pd.DataFrame, current: pd.DataFrame, column: str, known: Sequence[str], th: DriftThresholds
) -> list[ShareChange]:
    """Share of each value of ``column`` (decision or band) then vs now, in the contract's order."""
    ref_counts = reference[column].value_counts(dropna=True)
    cur_counts = current[column].value_counts(dropna=True)
    names = list(known) + sorted((set(ref_counts.index) | set(cur_counts.index)) - set(known))
    return [
        _share_change(
            str(n),
            float(ref_counts.get(n, 0)),
            len(reference),
            float(cur_counts.get(n, 0)),
            len(current),
            th,
            family=len(names),
        )
        for n in names
    ]


def fallback_drift(reference: pd.DataFrame, current: pd.DataFrame, th: DriftThresholds) -> FallbackDrift:
    """Share of requests answered by the rules fallback; the status looks at the current rate only."""

    def rate(frame: pd.DataFrame) -> float:
        if "fallback" not in frame.columns:
            return 0.0
        used = frame["fallback"].notna() & (frame["fallback"].astype("string").str.len() > 0)
        return float(used.mean())

    r_ref, r_cur = rate(reference), rate(current)
    return FallbackDrift(r_ref, r_cur, _level(r_cur, th.fallback_amber, th.fallback_red))


def _with_campaign(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame
    if "campaign" not in out.columns or out["campaign"].isna().any():
        out = out.copy()
        fallback = out["promo_code"] if "promo_code" in out.columns else pd.Series(pd.NA, index=out.index)
        base = out["campaign"] if "campaign" in out.columns else pd.Series(pd.NA, index=out.index)
        out["campaign"] = base.fillna(fallback)
    return out


def group_drift(reference: pd.DataFrame, current: pd.DataFrame, th: DriftThresholds) -> list[GroupDrift]:
    """Per promotion type and per campaign: rows, mean score and verify/refuse share, then vs now."""
    ref, cur = _with_campaign(reference), _with_campaign(current)
    rows: list[GroupDrift] = []
    for dim in ("promo_type", "campaign"):
        if dim not in ref.columns and dim not in cur.columns:
            continue
        stats_by_side = []
        for frame in (ref, cur):
            if dim not in frame.columns or frame[dim].isna().all():
                stats_by_side.append(pd.DataFrame(columns=["n", "mean", "flagged"]))
                continue
            g = frame.assign(_flag=frame["decision"].isin(["verify", "refuse"]).astype(float))
            agg = g.groupby(g[dim].astype("string"), dropna=True).agg(
                n=("score", "size"), mean=("score", "mean"), flagged=("_flag", "sum")
            )
            stats_by_side.append(agg)
        a, b = stats_by_side
        values = sorted(set(a.index) | set(b.index))
        for value in values:
            n_a = int(a["n"].get(value, 0))
            n_b = int(b["n"].get(value, 0))
            k_a = float(a["flagged"].get(value, 0.0))
            k_b = float(b["flagged"].get(value, 0.0))
            change = _share_change(str(value), k_a, n_a, k_b, n_b, th, family=len(values))
            enough = n_a >= th.min_group_rows and n_b >= th.min_group_rows
            rows.append(
                GroupDrift(
                    dimension=dim,
                    value=str(value),
                    n_reference=n_a,
                    n_current=n_b,
                    mean_score_reference=float(a["mean"].get(value, np.nan)),
                    mean_score_current=float(b["mean"].get(value, np.nan)),
                    flagged_share_reference=change.share_reference,
                    flagged_share_current=change.share_current,
                    delta_pp=change.delta_pp if n_a and n_b else float("nan"),
                    status=change.status if enough else "green",
                )
            )
    return rows


def feature_drift(reference: np.ndarray, current: np.ndarray, name: str, th: DriftThresholds) -> FeatureDrift:
    """PSI on reference quantile bins (NaN its own bin), KS or chi-square, and the missing-rate change."""
    ref_fin, cur_fin = reference[np.isfinite(reference)], current[np.isfinite(current)]
    distinct = np.unique(ref_fin)
    # The kind depends on the reference alone so that a feature keeps its test from one run to the next.
    categorical = distinct.size <= th.max_categories
    if categorical:
        # Values never seen in the reference share one "new values" bucket: that is exactly the news.
        labels = [_fmt_num(v) for v in distinct] + ["new values", "missing"]
        shares = []
        tables = []
        for values, finite in ((reference, ref_fin), (current, cur_fin)):
            known = [float(np.sum(finite == v)) for v in distinct]
            other = float(finite.size - sum(known))
            counts = np.array([*known, other, values.size - finite.size], dtype=float)
            tables.append(counts)
            shares.append((counts / max(values.size, 1)).tolist())
        s_ref, s_cur = shares
        table = np.vstack(tables)
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2:
            statistic, p = 0.0, 1.0
        else:
            chi = stats.chi2_contingency(table, correction=False)
            statistic, p = float(chi.statistic), float(chi.pvalue)
        effect_stat = 0.0
        test: Literal["ks", "chi2"] = "chi2"
    else:
        labels, s_ref, s_cur = binned_shares(reference, current, th.psi_bins)
        if ref_fin.size and cur_fin.size:
            ks = stats.ks_2samp(ref_fin, cur_fin)
            statistic, p = float(ks.statistic), float(ks.pvalue)
        else:
            statistic, p = 0.0, 1.0
        effect_stat = statistic
        test = "ks"
    psi = psi_from_shares(s_ref, s_cur)
    miss_ref = 1 - ref_fin.size / max(reference.size, 1)
    miss_cur = 1 - cur_fin.size / max(current.size, 1)
    effect = psi >= th.min_effect_psi or effect_stat >= th.min_effect_ks
    reasons: list[str] = []
    psi_status = _level(psi, th.psi_amber, th.psi_red)
    if psi_status != "green":
        reasons.append(f"PSI {psi:.2f}")
    test_status = _test_status(p, effect, th)
    # A significant test alone says "look" (amber). Red also needs a shift large enough to matter: PSI
    # past its red line, or for a flag or small category set a share that moved by share_red_pp.
    moved_pp = max((abs(a - b) * 100 for a, b in zip(s_ref, s_cur, strict=True)), default=0.0)
    big_enough = psi_status == "red" or (categorical and moved_pp >= th.share_red_pp)
    if test_status == "red" and not big_enough:
        test_status = "amber"
    if test_status != "green":
        reasons.append(f"{'KS' if test == 'ks' else 'chi-square'} p={p:.1e}")
    miss_p = _two_proportion_p(
        reference.size - ref_fin.size, reference.size, current.size - cur_fin.size, current.size
    )
    miss_status = (
        _level(abs(miss_cur - miss_ref) * 100, th.missing_amber_pp, th.missing_red_pp)
        if miss_p < th.p_amber
        else "green"
    )
    if miss_status != "green":
        reasons.append(f"missing {miss_ref:.0%} -> {miss_cur:.0%}")
    return FeatureDrift(
        name=name,
        kind="categorical" if categorical else "continuous",
        psi=psi,
        test=test,
        statistic=statistic,
        p_value=p,
        missing_reference=miss_ref,
        missing_current=miss_cur,
        status=_worst([psi_status, test_status, miss_status]),
        reasons=reasons,
        bins=labels,
        share_reference=s_ref,
        share_current=s_cur,
    )


def signal_drift(reference: pd.DataFrame, current: pd.DataFrame, th: DriftThresholds) -> list[ShareChange]:
    """Share of requests in which each signal is among the top signals, sorted by the size of the change."""
    if "top_signals" not in reference.columns and "top_signals" not in current.columns:
        return []
    counts: list[dict[str, int]] = []
    for frame in (reference, current):
        tally: dict[str, int] = {}
        if "top_signals" in frame.columns:
            for value in frame["top_signals"]:
                for name in set(parse_signals(value)):
                    tally[name] = tally.get(name, 0) + 1
        counts.append(tally)
    names = sorted(set(counts[0]) | set(counts[1]))
    changes = [
        _share_change(
            n, counts[0].get(n, 0), len(reference), counts[1].get(n, 0), len(current), th, len(names)
        )
        for n in names
    ]
    return sorted(changes, key=lambda c: (-abs(c.delta_pp), c.name))


def _labels_numeric(frame: pd.DataFrame) -> pd.Series:
    raw = frame["label"]
    if raw.dtype == object or str(raw.dtype) == "string":
        mapped = raw.map(
            lambda v: (
                1.0 if v in ("abuse", "1", 1, True) else 0.0 if v in ("legit", "0", 0, False) else np.nan
            )
        )
        return mapped.astype(float)
    return pd.to_numeric(raw, errors="coerce").astype(float)


def label_summary(reference: pd.DataFrame, current: pd.DataFrame) -> LabelSummary:
    """Share of rows labeled, median label delay in hours, and the abuse rate per pattern where labeled."""
    if "label" not in reference.columns and "label" not in current.columns:
        return LabelSummary(False, 0.0, 0.0, float("nan"), float("nan"), [])
    shares: list[float] = []
    delays: list[float] = []
    labeled: list[pd.DataFrame] = []
    for frame in (reference, current):
        if "label" not in frame.columns:
            shares.append(0.0)
            delays.append(float("nan"))
            labeled.append(frame.iloc[0:0].assign(_y=pd.Series(dtype=float)))
            continue
        y = _labels_numeric(frame)
        shares.append(float(y.notna().mean()))
        delay = float("nan")
        if "label_ts" in frame.columns and "ts" in frame.columns:
            d = pd.to_datetime(frame["label_ts"], utc=True) - pd.to_datetime(frame["ts"], utc=True)
            hours = d[y.notna()].dt.total_seconds() / 3600
            if hours.notna().any():
                delay = float(hours.median())
        delays.append(delay)
        labeled.append(frame.assign(_y=y)[y.notna()])
    by_pattern: list[PatternRate] = []
    has_pattern = all("pattern" in f.columns for f in labeled if len(f)) and any(len(f) for f in labeled)
    keys: list[str]
    if has_pattern:
        keys = sorted({str(p) for f in labeled if "pattern" in f.columns for p in f["pattern"].dropna()})
    else:
        keys = ["all"]
    for key in keys:
        parts = []
        for f in labeled:
            part = f if key == "all" and not has_pattern else f[f["pattern"].astype("string") == key]
            parts.append(part["_y"])
        by_pattern.append(
            PatternRate(
                pattern=key,
                labeled_reference=int(parts[0].size),
                labeled_current=int(parts[1].size),
                abuse_rate_reference=float(parts[0].mean()) if parts[0].size else float("nan"),
                abuse_rate_current=float(parts[1].mean()) if parts[1].size else float("nan"),
            )
        )
    return LabelSummary(True, shares[0], shares[1], delays[0], delays[1], by_pattern)


# ---------------------------------------------------------------------------------------------------
# summary sentences


def pct(share: float) -> str:
    """A share as a short percentage: 0.04 -> '4%', 0.092 -> '9.2%', 0.0004 -> '0.04%'."""
    if not math.isfinite(share):
        return "n/a"
    value = 100 * share
    if value == 0 or abs(value) >= 10:
        return f"{value:.0f}%"
    text = f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") + "%"


def _share_sentence(change: ShareChange, subject: str) -> str:
    verb = "rose" if change.delta_pp > 0 else "fell"
    return f"{subject} {verb} from {pct(change.share_reference)} to {pct(change.share_current)}"


def _names(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def summarize(result: DriftResult) -> list[str]:
    """Plain-words sentences for the fraud team, most important first."""
    lines: list[str] = []
    if result.violations:
        cols = sorted({v.column for v in result.violations})
        lines.append(f"{len(result.violations)} data check(s) failed on the current window: {_names(cols)}")
    s = result.score
    if s.status != "green":
        lines.append(
            f"the score distribution shifted (PSI {s.psi:.2f}): mean score "
            f"{s.mean_reference:.1f} then, {s.mean_current:.1f} now"
        )
    for change in result.decisions:
        if change.status != "green":
            words = _DECISION_WORDS.get(change.name, f"'{change.name}'")
            lines.append(_share_sentence(change, f"the share of decisions {words}"))
    for change in result.bands:
        if change.status != "green":
            lines.append(_share_sentence(change, f"the share of requests in the {change.name} band"))
    fb = result.fallback
    if fb.status != "green":
        lines.append(
            f"the rules fallback answered {pct(fb.rate_current)} of requests "
            f"(reference {pct(fb.rate_reference)}): check model and feature-store health"
        )
    drifted = [f for f in result.features if f.status != "green"]
    if drifted:
        red = sum(f.status == "red" for f in drifted)
        amber = len(drifted) - red
        lines.append(
            f"{len(drifted)} feature{'s' if len(drifted) != 1 else ''} drifted ({red} red, {amber} amber): "
            + _names([f.name for f in drifted])
        )
    moved = [g for g in result.groups if g.status != "green"]
    if moved:
        parts = [
            f"{g.value} ({pct(g.flagged_share_reference)} -> {pct(g.flagged_share_current)} verify/refuse)"
            for g in moved
        ]
        lines.append(f"{len(moved)} promotion type(s)/campaign(s) changed: " + _names(parts, 4))
    signals = [c for c in result.signals if c.status != "green"][:3]
    for change in signals:
        lines.append(_share_sentence(change, f"requests with the signal {change.name}"))
    if result.status == "green" and not lines:
        lines.append("no drift: scores, decisions and features match the reference")
    lab = result.labels
    if lab.available:
        delay = lab.median_delay_hours_current
        delay_text = f", median delay {delay:.0f} h" if math.isfinite(delay) else ""
        lines.append(
            f"labels: {pct(lab.labeled_share_current)} of current requests labeled so far{delay_text}"
        )
    return lines


# ---------------------------------------------------------------------------------------------------
# the one pure entry point


def drift_features(reference: pd.DataFrame) -> list[str]:
    """The model features a scoring frame carries, in model order: what ``compute_drift`` compares."""
    from training.dataset import model_feature_names

    return [name for name in model_feature_names() if name in reference.columns]


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    feature_names: Sequence[str],
    thresholds: DriftThresholds | None = None,
) -> DriftResult:
    """Compare a current scoring frame with the reference: scores, mix, groups, features, signals, labels.

    Raises ValueError naming the side and field when a frame lacks ``score``/``band``/``decision``, has
    a non-numeric score, or when a model feature is missing from the reference. A feature missing from
    the current window is treated as entirely missing there (and so flagged), not as an error.
    """
    th = thresholds or DriftThresholds()
    ref = _check_frame(reference, "reference")
    cur = _check_frame(current, "current")
    absent = [n for n in feature_names if n not in ref.columns]
    if absent:
        raise ValueError(f"reference: missing feature column(s) {_names(list(absent))}")
    # One test per feature: Bonferroni keeps a hundred-odd comparisons from crying wolf together.
    per_feature = replace(
        th, p_amber=th.p_amber / max(len(feature_names), 1), p_red=th.p_red / max(len(feature_names), 1)
    )
    features = [feature_drift(_numeric(ref, n), _numeric(cur, n), n, per_feature) for n in feature_names]
    features.sort(key=lambda f: (-_SEVERITY[f.status], -f.psi, f.name))
    score = score_drift(ref, cur, th)
    decisions = mix_drift(ref, cur, "decision", DECISIONS, th)
    bands = mix_drift(ref, cur, "band", BANDS, th)
    fallback = fallback_drift(ref, cur, th)
    groups = group_drift(ref, cur, th)
    signals = signal_drift(ref, cur, th)
    labels = label_summary(ref, cur)
    status = _worst(
        [score.status, fallback.status]
        + [c.status for c in (*decisions, *bands, *signals)]
        + [g.status for g in groups]
        + [f.status for f in features]
    )
    result = DriftResult(
        status=status,
        summary=[],
        generated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        n_reference=len(ref),
        n_current=len(cur),
        score=score,
        decisions=decisions,
        bands=bands,
        fallback=fallback,
        groups=groups,
        features=features,
        signals=signals,
        labels=labels,
        thresholds=th,
    )
    return replace(result, summary=summarize(result))


def with_violations(result: DriftResult, violations: Sequence[Violation]) -> DriftResult:
    """Attach data-validation failures: they raise the status to at least amber and lead the summary."""
    if not violations:
        return result
    status = _worst([result.status, "amber"])
    updated = replace(result, violations=list(violations), status=status)
    return replace(updated, summary=summarize(updated))


def exit_code(result: DriftResult) -> int:
    """Process exit status for schedulers: 0 green, 1 amber (look this week), 2 red (look today)."""
    return _SEVERITY[result.status]


# ---------------------------------------------------------------------------------------------------
# data validation with great-expectations


def _null_mostly(null_rate: float, margin: float) -> float:
    return max(0.0, min(1.0, 1.0 - null_rate - margin))


def build_suite(
    reference: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    null_margin: float = 0.05,
    range_margin: float = 0.25,
    range_mostly: float = 0.999,
    name: str = "promoguard_drift",
) -> Any:
    """A great-expectations suite built from the reference window.

    Per feature: the column exists, its missing rate stays within the reference's rate plus
    ``null_margin``, and at least ``range_mostly`` of its values stay within the reference's min/max
    widened by ``range_margin`` of the range (never below 0 for features that were never negative,
    since counts cannot be). The tolerance exists because counts and ages are heavy-tailed: a new
    window always has a few values past the reference's maximum, and that alone is not a data problem.
    Plus: score not null and strictly in [0, 100], decision and band within the contract's sets.
    """
    import great_expectations as gx

    ref = _check_frame(reference, "reference")
    absent = [n for n in feature_names if n not in ref.columns]
    if absent:
        raise ValueError(f"reference: missing feature column(s) {_names(list(absent))}")
    ex = gx.expectations
    # Built as a list: adding to a suite one by one needs an active (saved) data context.
    expectations: list[Any] = []
    expectations.append(ex.ExpectColumnValuesToNotBeNull(column="score"))
    expectations.append(ex.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=100))
    expectations.append(ex.ExpectColumnValuesToBeInSet(column="decision", value_set=list(DECISIONS)))
    expectations.append(ex.ExpectColumnValuesToBeInSet(column="band", value_set=list(BANDS)))
    for col in feature_names:
        values = _numeric(ref, col)
        finite = values[np.isfinite(values)]
        expectations.append(ex.ExpectColumnToExist(column=col))
        null_rate = 1 - finite.size / max(values.size, 1)
        expectations.append(
            ex.ExpectColumnValuesToNotBeNull(
                column=col, mostly=round(_null_mostly(null_rate, null_margin), 4)
            )
        )
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            pad = range_margin * max(hi - lo, 1.0)
            low = max(lo - pad, 0.0) if lo >= 0 else lo - pad
            expectations.append(
                ex.ExpectColumnValuesToBeBetween(
                    column=col, min_value=low, max_value=hi + pad, mostly=range_mostly
                )
            )
    return gx.ExpectationSuite(name=name, expectations=expectations)


def _observed(kind: str, result: dict[str, Any], col_present: bool) -> str:
    if not col_present:
        return "column absent"
    if kind == "expect_column_values_to_not_be_null":
        return f"{result.get('unexpected_percent', 0.0):.1f}% missing"
    examples = result.get("partial_unexpected_list") or []
    if kind == "expect_column_values_to_be_between":
        nums = [float(v) for v in examples if isinstance(v, int | float) and math.isfinite(float(v))]
        if nums:
            return (
                f"{result.get('unexpected_count', 0)} value(s) out of range, e.g. {_fmt_num(min(nums))}"
                + (f" to {_fmt_num(max(nums))}" if max(nums) != min(nums) else "")
            )
    shown = sorted({str(v) for v in examples})[:5]
    return f"{result.get('unexpected_count', 0)} unexpected value(s): {', '.join(shown)}"


def validate_current(current: pd.DataFrame, suite: Any) -> list[Violation]:
    """Run the suite on the current window in an ephemeral context; one Violation per failed expectation."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # Progress bars would land in the scheduler's log once per expectation.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("promoguard_drift")
    asset = source.add_dataframe_asset("current_window")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": current}
    )
    # BASIC keeps the counts and a few example values but skips the row-index lists, which cost a lot.
    outcome = batch.validate(suite, result_format="BASIC")
    violations: list[Violation] = []
    for item in outcome.results:
        if item.success:
            continue
        config = item.expectation_config
        kind = str(config.type)
        column = str(config.kwargs.get("column", ""))
        res = dict(item.result or {})
        present = column in current.columns
        if not present and kind != "expect_column_to_exist":
            # An absent column is reported once, by the existence check, not once per expectation.
            continue
        unexpected = 100.0 if not present else float(res.get("unexpected_percent") or 0.0)
        violations.append(Violation(kind, column, _observed(kind, res, present), unexpected))
    violations.sort(key=lambda v: (-v.unexpected_percent, v.column))
    return violations


# ---------------------------------------------------------------------------------------------------
# plots (PNG, embedded as data URIs)

_REF_COLOUR = "#8c9bab"
_CUR_COLOUR = "#d9480f"


def _png_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(
    ax: Any, labels: Sequence[str], ref: Sequence[float], cur: Sequence[float], ref_label: str, cur_label: str
) -> None:
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [100 * v for v in ref], width=0.4, color=_REF_COLOUR, label=ref_label)
    ax.bar(x + 0.2, [100 * v for v in cur], width=0.4, color=_CUR_COLOUR, label=cur_label)
    ax.set_xticks(x)
    ax.set_xticklabels(
        labels, rotation=30 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center", fontsize=8
    )
    ax.set_ylabel("% of requests")
    ax.legend(fontsize=8)


def make_plots(result: DriftResult, reference_label: str, current_label: str) -> dict[str, str]:
    """PNG data URIs keyed by section: scores, decisions, features, signals (the latter two when relevant)."""
    # Figures built without pyplot render headless without switching the process-wide backend, which
    # would silently turn off inline plots in the notebook that called the report.
    from matplotlib.figure import Figure

    plots: dict[str, str] = {}
    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    _bars(
        ax,
        result.score.bins,
        result.score.share_reference,
        result.score.share_current,
        reference_label,
        current_label,
    )
    ax.set_xlabel("risk score")
    ax.set_title("score distribution")
    plots["scores"] = _png_data_uri(fig)

    fig = Figure(figsize=(9, 3))
    axes = fig.subplots(1, 2)
    for ax, mix, title in ((axes[0], result.decisions, "decisions"), (axes[1], result.bands, "bands")):
        _bars(
            ax,
            [c.name for c in mix],
            [c.share_reference for c in mix],
            [c.share_current for c in mix],
            reference_label,
            current_label,
        )
        ax.set_title(title)
    plots["decisions"] = _png_data_uri(fig)

    top = [f for f in result.features if f.status != "green"][:4]
    if top:
        fig = Figure(figsize=(3.6 * len(top), 3))
        axes = fig.subplots(1, len(top), squeeze=False)
        for ax, feat in zip(axes[0], top, strict=True):
            _bars(ax, feat.bins, feat.share_reference, feat.share_current, reference_label, current_label)
            ax.set_title(feat.name, fontsize=8)
        plots["features"] = _png_data_uri(fig)

    moved = [c for c in result.signals if abs(c.delta_pp) > 0][:10]
    if moved:
        fig = Figure(figsize=(7, 0.35 * len(moved) + 1))
        ax = fig.subplots()
        deltas = [c.delta_pp for c in moved][::-1]
        ax.barh(
            [c.name for c in moved][::-1],
            deltas,
            color=[_CUR_COLOUR if d > 0 else _REF_COLOUR for d in deltas],
        )
        ax.axvline(0, color="#333333", linewidth=0.8)
        ax.set_xlabel("change in share of requests (percentage points)")
        ax.tick_params(axis="y", labelsize=8)
        plots["signals"] = _png_data_uri(fig)
    return plots


# ---------------------------------------------------------------------------------------------------
# the report (the edge that writes files)


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, paths and numpy scalars become plain values."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def result_to_dict(result: DriftResult) -> dict[str, Any]:
    """The machine-readable report: status, exit code, summary, metrics and the per-feature table."""
    raw = asdict(result)
    for feat in raw["features"]:
        # The bin shares are for the plots; the JSON keeps the table lean.
        for key in ("bins", "share_reference", "share_current"):
            feat.pop(key)
    return _clean(
        {
            "status": result.status,
            "exit_code": exit_code(result),
            "summary": result.summary,
            "generated_at": result.generated_at,
            "n_reference": result.n_reference,
            "n_current": result.n_current,
            "metrics": {
                "score": raw["score"],
                "decisions": raw["decisions"],
                "bands": raw["bands"],
                "fallback": raw["fallback"],
                "groups": raw["groups"],
                "signals": raw["signals"],
                "labels": raw["labels"],
            },
            "features": raw["features"],
            "violations": raw["violations"],
            "thresholds": raw["thresholds"],
        }
    )


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#1f2933;line-height:1.4}
h1{font-size:22px;margin-bottom:4px}
h2{font-size:18px;border-bottom:1px solid #d9e2ec;padding-bottom:4px;margin-top:32px}
.meta{color:#52606d;font-size:13px}
.badge{display:inline-block;padding:6px 14px;border-radius:14px;color:#fff;font-weight:bold;font-size:15px}
.green{background:#2f9e44} .amber{background:#f08c00} .red{background:#c92a2a}
td.green,td.amber,td.red{color:#fff;font-weight:bold;text-align:center}
.summary{font-size:16px;background:#f5f7fa;border-left:4px solid #9fb3c8;padding:8px 16px}
.summary li{margin:4px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #d9e2ec;padding:4px 8px}
th{background:#f0f4f8;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;margin:8px 0} .note{color:#52606d;font-size:13px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None or not math.isfinite(value) else fmt.format(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[tuple[str, str]]]) -> str:
    """Rows are sequences of (css class, already-escaped text) cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>" for cls, text in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status_cell(status: str) -> tuple[str, str]:
    return (status, _e(status))


def _share_rows(changes: Sequence[ShareChange]) -> list[list[tuple[str, str]]]:
    return [
        [
            ("", _e(c.name)),
            ("num", _e(pct(c.share_reference))),
            ("num", _e(pct(c.share_current))),
            ("num", _e(f"{c.delta_pp:+.1f}")),
            _status_cell(c.status),
        ]
        for c in changes
    ]


def render_html(
    result: DriftResult, plots: dict[str, str], *, title: str, reference_label: str, current_label: str
) -> str:
    """One self-contained HTML page: inline CSS, images as data URIs, no scripts and no external links."""
    ref_l, cur_l = _e(reference_label), _e(current_label)
    share_headers = ["", reference_label, current_label, "change (pp)", "status"]
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>generated {_e(result.generated_at)} &middot; reference: {ref_l} "
        f"({result.n_reference:,} requests) &middot; current: {cur_l} ({result.n_current:,} requests)</p>",
        f"<p><span class='badge {_e(result.status)}'>{_e(result.status.upper())}</span></p>",
        "<ul class='summary'>" + "".join(f"<li>{_e(s)}</li>" for s in result.summary) + "</ul>",
    ]
    s = result.score
    parts += [
        "<h2>Scores</h2>",
        _table(
            ["mean score then", "mean score now", "PSI", "KS statistic", "p-value", "status"],
            [
                [
                    ("num", _e(_num(s.mean_reference, "{:.1f}"))),
                    ("num", _e(_num(s.mean_current, "{:.1f}"))),
                    ("num", _e(_num(s.psi))),
                    ("num", _e(_num(s.ks_statistic))),
                    ("num", _e(_num(s.p_value, "{:.1e}"))),
                    _status_cell(s.status),
                ]
            ],
        ),
        f"<img alt='score distribution then vs now' src='{plots['scores']}'>",
        "<h2>Decisions &amp; bands</h2>",
        f"<img alt='decision and band mix' src='{plots['decisions']}'>",
        "<h3>Decisions</h3>",
        _table(share_headers, _share_rows(result.decisions)),
        "<h3>Bands</h3>",
        _table(share_headers, _share_rows(result.bands)),
        "<h3>Rules fallback</h3>",
        _table(
            ["answered by rules then", "answered by rules now", "status"],
            [
                [
                    ("num", _e(pct(result.fallback.rate_reference))),
                    ("num", _e(pct(result.fallback.rate_current))),
                    _status_cell(result.fallback.status),
                ]
            ],
        ),
        "<h2>Per promotion type and campaign</h2>",
        "<p class='note'>verify/refuse = share of requests sent to verification or refused.</p>",
    ]
    if result.groups:
        parts.append(
            _table(
                [
                    "by",
                    "value",
                    "requests then",
                    "requests now",
                    "mean score then",
                    "mean score now",
                    "verify/refuse then",
                    "verify/refuse now",
                    "change (pp)",
                    "status",
                ],
                [
                    [
                        ("", _e(g.dimension.replace("_", " "))),
                        ("", _e(g.value)),
                        ("num", _e(f"{g.n_reference:,}")),
                        ("num", _e(f"{g.n_current:,}")),
                        ("num", _e(_num(g.mean_score_reference, "{:.1f}"))),
                        ("num", _e(_num(g.mean_score_current, "{:.1f}"))),
                        ("num", _e(pct(g.flagged_share_reference))),
                        ("num", _e(pct(g.flagged_share_current))),
                        ("num", _e(_num(g.delta_pp, "{:+.1f}"))),
                        _status_cell(g.status),
                    ]
                    for g in result.groups
                ],
            )
        )
    else:
        parts.append("<p class='note'>No promotion type or campaign columns in these windows.</p>")
    parts.append("<h2>Features</h2>")
    if "features" in plots:
        parts.append(f"<img alt='top drifted features' src='{plots['features']}'>")
    parts.append(
        "<p class='note'>PSI over the reference's quantile bins (missing values are a bin of their own); "
        "KS test for continuous features, chi-square for flags and low-cardinality counts.</p>"
    )
    parts.append(
        _table(
            [
                "feature",
                "status",
                "PSI",
                "test",
                "statistic",
                "p-value",
                "missing then",
                "missing now",
                "why",
            ],
            [
                [
                    ("", _e(f.name)),
                    _status_cell(f.status),
                    ("num", _e(_num(f.psi))),
                    ("", _e("KS" if f.test == "ks" else "chi-square")),
                    ("num", _e(_num(f.statistic))),
                    ("num", _e(_num(f.p_value, "{:.1e}"))),
                    ("num", _e(pct(f.missing_reference))),
                    ("num", _e(pct(f.missing_current))),
                    ("", _e("; ".join(f.reasons))),
                ]
                for f in result.features
            ],
        )
    )
    parts.append("<h2>Data validation</h2>")
    if result.violations:
        parts.append(
            _table(
                ["check", "column", "observed", "unexpected %"],
                [
                    [
                        ("", _e(v.expectation)),
                        ("", _e(v.column)),
                        ("", _e(v.observed)),
                        ("num", _e(f"{v.unexpected_percent:.1f}")),
                    ]
                    for v in result.violations
                ],
            )
        )
    else:
        parts.append(
            "<p>All data checks passed: columns present, missing rates and value ranges as in the "
            "reference.</p>"
        )
    parts.append("<h2>Top signals</h2>")
    if result.signals:
        if "signals" in plots:
            parts.append(f"<img alt='signal mix change' src='{plots['signals']}'>")
        parts.append(
            _table(
                ["signal", reference_label, current_label, "change (pp)", "status"],
                _share_rows(result.signals),
            )
        )
    else:
        parts.append("<p class='note'>No top signals recorded in these windows.</p>")
    parts.append("<h2>Labels &amp; abuse rate per pattern</h2>")
    lab = result.labels
    if lab.available:
        parts.append(
            _table(
                ["", reference_label, current_label],
                [
                    [
                        ("", "share labeled"),
                        ("num", _e(pct(lab.labeled_share_reference))),
                        ("num", _e(pct(lab.labeled_share_current))),
                    ],
                    [
                        ("", "median label delay (hours)"),
                        ("num", _e(_num(lab.median_delay_hours_reference, "{:.1f}"))),
                        ("num", _e(_num(lab.median_delay_hours_current, "{:.1f}"))),
                    ],
                ],
            )
        )
        parts.append(
            _table(
                ["pattern", "labeled then", "labeled now", "abuse rate then", "abuse rate now"],
                [
                    [
                        ("", _e(p.pattern)),
                        ("num", _e(f"{p.labeled_reference:,}")),
                        ("num", _e(f"{p.labeled_current:,}")),
                        ("num", _e(pct(p.abuse_rate_reference))),
                        ("num", _e(pct(p.abuse_rate_current))),
                    ]
                    for p in lab.by_pattern
                ],
            )
        )
        parts.append("<p class='note'>Labels arrive late: recent windows always look less labeled.</p>")
    else:
        parts.append("<p class='note'>No labels in these windows yet.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    result: DriftResult,
    violations: Sequence[Violation],
    out_dir: Path,
    *,
    title: str = "promoguard drift report",
    reference_label: str = "reference",
    current_label: str = "current",
) -> ReportPaths:
    """Write drift-YYYYmmddTHHMMSS.html and .json under out_dir, plus latest.html and latest.json copies."""
    if violations and not result.violations:
        result = with_violations(result, violations)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.strptime(result.generated_at, "%Y-%m-%dT%H:%M:%SZ").strftime("%Y%m%dT%H%M%S")
    base = f"drift-{stamp}"
    counter = 1
    # Two runs within one second must not overwrite each other's report.
    while (out_dir / f"{base}.html").exists() or (out_dir / f"{base}.json").exists():
        base = f"drift-{stamp}-{counter}"
        counter += 1
    plots = make_plots(result, reference_label, current_label)
    page = render_html(
        result, plots, title=title, reference_label=reference_label, current_label=current_label
    )
    html_path, json_path = out_dir / f"{base}.html", out_dir / f"{base}.json"
    html_path.write_text(page, encoding="utf-8")
    payload = result_to_dict(result)
    payload.update({"title": title, "reference_label": reference_label, "current_label": current_label})
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False), encoding="utf-8")
    shutil.copyfile(html_path, out_dir / "latest.html")
    shutil.copyfile(json_path, out_dir / "latest.json")
    return ReportPaths(html=html_path, json=json_path)


def run_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    feature_names: Sequence[str],
    out_dir: Path,
    thresholds: DriftThresholds | None = None,
    *,
    title: str = "promoguard drift report",
    reference_label: str = "reference",
    current_label: str = "current",
) -> tuple[DriftResult, ReportPaths]:
    """Compute drift, validate the current window against a suite built from the reference, write the report.

    The returned result includes the validation failures; ``exit_code(result)`` is the status to exit with.
    """
    result = compute_drift(reference, current, feature_names, thresholds)
    violations = validate_current(current, build_suite(reference, feature_names))
    result = with_violations(result, violations)
    paths = write_report(
        result, violations, out_dir, title=title, reference_label=reference_label, current_label=current_label
    )
    return result, paths
