"""Drift for the fraud team: how today's scoring compares with the champion's reference window.

Both sides are *scoring frames*: one row per scored request with ``score`` (0-100), ``band``,
``decision``, ``fallback``, ``top_signals``, ``promo_type``, ``campaign`` (falls back to
``promo_code``), optional ``label``/``label_ts``/``pattern``, ``ts`` and the model's feature columns.
The reference is the champion's scored test window; the current side is recent rows of the service's
scoring log or a batch of events scored offline. The scoring log has no ``pattern`` (that is simulator
ground truth) and often no labels yet; both are optional on either side.

Everything here is pure: :func:`compute_drift` compares two frames. :mod:`monitoring.validation` checks
the current window with great-expectations, :mod:`monitoring.render` writes the report and
:mod:`monitoring.report` is the one call for the command line and notebooks.

**The badge** (``DriftResult.status``) follows what the fraud team acts on: the score distribution,
the decision and band mix, the rules-fallback share and the verify/refuse share per promotion type and
busy code. Feature drift explains a move and is shown in full, but on its own it raises the badge to
amber at most: a red feature makes the badge amber ("look this week", never "look today"), amber
features leave it as it is. The team cannot act on a feature, and a feature that moved without moving
scores or decisions has not changed what checkout does. Failed data checks also make it amber. Top
signals and labels are context only.

**Exit codes** (:class:`ExitCode`) are what a scheduler alerts on:

* ``0`` green: nothing the fraud team acts on moved beyond sampling noise;
* ``1`` amber: something moved (or features or data checks did); a person should look this week;
* ``2`` red: scores, decisions, bands, the fallback share or a promotion moved a lot; look today;
* ``3`` nothing to compare: no champion, or nothing scored in the window (no report is written);
* ``4`` failed: the run itself failed (bad input, unreadable files); no report is written.

Statuses need *both* a statistically significant change *and* a minimum effect size: on the hundreds
of thousands of rows a busy store scores per day every p-value is tiny, and a report that is always
amber teaches the fraud team to ignore it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from monitoring.catalog import Comparison, compared_values, treatment

Status = Literal["green", "amber", "red"]

_SEVERITY: dict[str, int] = {"green": 0, "amber": 1, "red": 2}
DECISIONS: tuple[str, ...] = ("allow", "watch", "verify", "refuse")
BANDS: tuple[str, ...] = ("clean", "low", "medium", "high")
REQUIRED_COLUMNS: tuple[str, ...] = ("score", "band", "decision")
#: The summary names at most this many findings; the detail stays in the sections below it.
MAX_FINDINGS = 5

# Plain words for the summary; the fraud team reads sentences, not column names.
_DECISION_WORDS: dict[str, str] = {
    "allow": "allowed",
    "watch": "put on watch",
    "verify": "sent to verification",
    "refuse": "refused",
}


class ExitCode(IntEnum):
    """Process exit status of a drift run; see the module docstring."""

    GREEN = 0
    AMBER = 1
    RED = 2
    NOTHING_TO_COMPARE = 3
    FAILED = 4


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
    * ``min_group_rows``: a code gets a row of its own only with at least this many requests on both
      sides (the others fold into "<type>: other codes"); rows with fewer are shown, never flagged.
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
        """Reject thresholds whose amber line sits above their red line."""
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
    """Score mean and verify/refuse share of one promotion type or code, then vs now.

    ``dimension`` is ``promo_type`` (every request of a type), ``campaign`` (one busy code or campaign)
    or ``other codes`` (the type's codes too small to judge alone, folded together).
    """

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
    promo_type: str = ""


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one model feature; ``bins``/``share_*`` are the PSI bins (plotted for the top features).

    ``comparison`` is ``rate`` for features that grow with the calendar (see :mod:`monitoring.catalog`);
    ``rate`` then says what share was compared. ``display_name`` is the name the fraud team knows.
    """

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
    display_name: str = ""
    comparison: Comparison = "distribution"
    rate: str = ""


@dataclass(frozen=True)
class NotLogged:
    """A model feature one side does not carry (e.g. not yet in the scoring log): shown, never drift."""

    name: str
    display_name: str
    missing_from: Literal["reference", "current", "both"]


@dataclass(frozen=True)
class PatternRate:
    """Abuse rate among labeled rows of one pattern, or of all of them (``all labeled``).

    A side without a ``pattern`` column (the scoring log) has ``None`` labeled counts for patterns.
    """

    pattern: str
    labeled_reference: int | None
    labeled_current: int | None
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
    """Everything a drift report shows; JSON-able through :func:`monitoring.render.result_to_dict`.

    ``summary`` holds the findings (at most :data:`MAX_FINDINGS`, most important first); ``notes`` the
    context a reader needs to trust them (labels, features not logged).
    """

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
    not_logged: list[NotLogged] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# statistics


def worst(statuses: Iterable[str]) -> Status:
    """The most severe of some statuses (green when there are none)."""
    level = max((_SEVERITY[s] for s in statuses), default=0)
    return ("green", "amber", "red")[level]  # type: ignore[return-value]


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
    return np.unique(qs[qs > values.min()])


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


def fmt_num(x: float) -> str:
    """A number short enough for a bin label or a table cell."""
    return f"{x:g}" if abs(x) < 1e6 else f"{x:.3g}"


def _bin_labels(cuts: np.ndarray) -> list[str]:
    if cuts.size == 0:
        return ["all"]
    labels = [f"< {fmt_num(cuts[0])}"]
    labels += [f"{fmt_num(lo)} to < {fmt_num(hi)}" for lo, hi in itertools.pairwise(cuts)]
    labels.append(f">= {fmt_num(cuts[-1])}")
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


def check_frame(frame: pd.DataFrame, side: str) -> pd.DataFrame:
    """A copy with a float score and lower-case band/decision; ValueError naming the side and field."""
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


def numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    """One column as float64 (booleans as 0/1, anything unparseable as NaN); all NaN when absent."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    values = frame[column]
    if values.dtype == bool:
        values = values.astype(float)
    out = pd.to_numeric(values, errors="coerce")
    return out.to_numpy(dtype=float, na_value=np.nan)


def _signal_items(items: Iterable[Any]) -> list[str]:
    names: list[str] = []
    for item in items:
        if isinstance(item, dict):
            if item.get("name"):
                names.append(str(item["name"]))
        elif item is not None and not (isinstance(item, float) and math.isnan(item)):
            names.append(str(item))
    return names


def parse_signals(value: Any) -> list[str]:
    """Signal names from a list, a tuple, a numpy array or a JSON string of a list; anything else is none."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            # A bare comma-separated string is what a CSV export of the log gives.
            return [s.strip() for s in text.split(",") if s.strip()]
    if isinstance(value, dict):
        return [str(value.get("name"))] if value.get("name") else []
    if isinstance(value, list | tuple | np.ndarray):
        return _signal_items(value)
    return []


# ---------------------------------------------------------------------------------------------------
# scores, decisions, fallback


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
    status = worst([_level(psi, th.psi_amber, th.psi_red), _test_status(p, effect, th)])
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


# ---------------------------------------------------------------------------------------------------
# promotion types and codes

_NO_TYPE = "unknown type"


def _group_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """type, campaign (falls back to the promo code; empty when neither), score and verify/refuse flag."""
    nothing = pd.Series(pd.NA, index=frame.index, dtype="string")
    types = frame["promo_type"].astype("string") if "promo_type" in frame.columns else nothing
    campaign = frame["campaign"].astype("string") if "campaign" in frame.columns else nothing
    if "promo_code" in frame.columns:
        campaign = campaign.fillna(frame["promo_code"].astype("string"))
    return pd.DataFrame(
        {
            "type": types.fillna(_NO_TYPE),
            "campaign": campaign.fillna(""),
            "score": frame["score"].to_numpy(dtype=float),
            "flag": frame["decision"].isin(["verify", "refuse"]).to_numpy(dtype=float),
        },
        index=frame.index,
    )


def _tally(frame: pd.DataFrame, side: str) -> pd.DataFrame:
    keys = _group_keys(frame)
    agg = keys.groupby(["type", "campaign"], sort=False).agg(
        n=("score", "size"), score=("score", "sum"), flagged=("flag", "sum")
    )
    return agg.add_suffix(f"_{side}")


def _group_row(
    dimension: str, value: str, promo_type: str, counts: pd.Series, th: DriftThresholds, family: int
) -> GroupDrift:
    n_a, n_b = int(counts["n_ref"]), int(counts["n_cur"])
    change = _share_change(value, counts["flagged_ref"], n_a, counts["flagged_cur"], n_b, th, family)
    enough = n_a >= th.min_group_rows and n_b >= th.min_group_rows
    return GroupDrift(
        dimension=dimension,
        value=value,
        n_reference=n_a,
        n_current=n_b,
        mean_score_reference=float(counts["score_ref"] / n_a) if n_a else float("nan"),
        mean_score_current=float(counts["score_cur"] / n_b) if n_b else float("nan"),
        flagged_share_reference=change.share_reference,
        flagged_share_current=change.share_current,
        delta_pp=change.delta_pp if n_a and n_b else float("nan"),
        status=change.status if enough else "green",
        promo_type=promo_type,
    )


def _type_rows(promo_type: str, block: pd.DataFrame, min_rows: int) -> list[tuple[str, str, pd.Series]]:
    """The rows of one promotion type: the type, its busy codes, then its other codes folded together."""
    rows = [("promo_type", promo_type, block.sum())]
    campaigns = np.asarray(block.index.get_level_values("campaign"), dtype=str)
    own = ((block["n_ref"] >= min_rows) & (block["n_cur"] >= min_rows)).to_numpy() & (campaigns != "")
    busy = block[own]
    for i in np.argsort(campaigns[own], kind="stable"):
        rows.append(("campaign", str(campaigns[own][i]), busy.iloc[i]))
    # Without a busy code the folded row would only repeat the type's own row.
    if own.any() and (~own).any():
        rows.append(("other codes", f"{promo_type}: other codes", block[~own].sum()))
    return rows


def group_drift(reference: pd.DataFrame, current: pd.DataFrame, th: DriftThresholds) -> list[GroupDrift]:
    """Per promotion type, then per busy code: rows, mean score and verify/refuse share, then vs now.

    A code (or campaign) gets its own row only with ``min_group_rows`` requests on both sides; one-off
    and single-use codes are folded into "<type>: other codes", so the table stays the size of the
    promotion calendar, not of the number of codes ever printed. Types come busiest first.
    """
    both = _tally(reference, "ref").join(_tally(current, "cur"), how="outer").fillna(0.0)
    blocks = {str(t): b for t, b in both.groupby(level="type", sort=False)}
    order = sorted(blocks, key=lambda t: (-float(blocks[t][["n_ref", "n_cur"]].to_numpy().sum()), t))
    rows = [
        (dim, value, t, counts)
        for t in order
        for dim, value, counts in _type_rows(t, blocks[t], th.min_group_rows)
    ]
    return [_group_row(dim, value, t, counts, th, len(rows)) for dim, value, t, counts in rows]


# ---------------------------------------------------------------------------------------------------
# features


def _categorical_shares(
    reference: np.ndarray, current: np.ndarray, distinct: np.ndarray
) -> tuple[list[str], list[float], list[float], float, float]:
    """Bins, shares, chi-square statistic and p-value for a flag or low-cardinality feature."""
    # Values never seen in the reference share one "new values" bucket: that is exactly the news.
    labels = [fmt_num(v) for v in distinct] + ["new values", "missing"]
    shares: list[list[float]] = []
    tables = []
    for values in (reference, current):
        finite = values[np.isfinite(values)]
        known = [float(np.sum(finite == v)) for v in distinct]
        counts = np.array([*known, float(finite.size - sum(known)), values.size - finite.size], dtype=float)
        tables.append(counts)
        shares.append((counts / max(values.size, 1)).tolist())
    table = np.vstack(tables)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return labels, shares[0], shares[1], 0.0, 1.0
    chi = stats.chi2_contingency(table, correction=False)
    return labels, shares[0], shares[1], float(chi.statistic), float(chi.pvalue)


def _continuous_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    ref_fin, cur_fin = reference[np.isfinite(reference)], current[np.isfinite(current)]
    if not (ref_fin.size and cur_fin.size):
        return 0.0, 1.0
    ks = stats.ks_2samp(ref_fin, cur_fin)
    return float(ks.statistic), float(ks.pvalue)


def _missing_change(
    reference: np.ndarray, current: np.ndarray, th: DriftThresholds
) -> tuple[float, float, Status]:
    """Missing rate then, now, and the status of the change (significant and large enough)."""
    miss_ref_n = float(np.sum(~np.isfinite(reference)))
    miss_cur_n = float(np.sum(~np.isfinite(current)))
    miss_ref = miss_ref_n / max(reference.size, 1)
    miss_cur = miss_cur_n / max(current.size, 1)
    p = _two_proportion_p(miss_ref_n, reference.size, miss_cur_n, current.size)
    status: Status = (
        _level(abs(miss_cur - miss_ref) * 100, th.missing_amber_pp, th.missing_red_pp)
        if p < th.p_amber
        else "green"
    )
    return miss_ref, miss_cur, status


def feature_drift(reference: np.ndarray, current: np.ndarray, name: str, th: DriftThresholds) -> FeatureDrift:
    """PSI on reference quantile bins (NaN its own bin), KS or chi-square, and the missing-rate change."""
    distinct = np.unique(reference[np.isfinite(reference)])
    # The kind depends on the reference alone so that a feature keeps its test from one run to the next.
    categorical = distinct.size <= th.max_categories
    if categorical:
        labels, s_ref, s_cur, statistic, p = _categorical_shares(reference, current, distinct)
        effect_stat = 0.0
    else:
        labels, s_ref, s_cur = binned_shares(reference, current, th.psi_bins)
        statistic, p = _continuous_test(reference, current)
        effect_stat = statistic
    test: Literal["ks", "chi2"] = "chi2" if categorical else "ks"
    psi = psi_from_shares(s_ref, s_cur)
    reasons: list[str] = []
    psi_status = _level(psi, th.psi_amber, th.psi_red)
    if psi_status != "green":
        reasons.append(f"PSI {psi:.2f}")
    test_status = _test_status(p, psi >= th.min_effect_psi or effect_stat >= th.min_effect_ks, th)
    # A significant test alone says "look" (amber). Red also needs a shift large enough to matter: PSI
    # past its red line, or for a flag or small category set a share that moved by share_red_pp.
    moved_pp = max((abs(a - b) * 100 for a, b in zip(s_ref, s_cur, strict=True)), default=0.0)
    if test_status == "red" and not (psi_status == "red" or (categorical and moved_pp >= th.share_red_pp)):
        test_status = "amber"
    if test_status != "green":
        reasons.append(f"{'KS' if test == 'ks' else 'chi-square'} p={p:.1e}")
    miss_ref, miss_cur, miss_status = _missing_change(reference, current, th)
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
        status=worst([psi_status, test_status, miss_status]),
        reasons=reasons,
        bins=labels,
        share_reference=s_ref,
        share_current=s_cur,
        display_name=name,
    )


def split_logged(
    reference: pd.DataFrame, current: pd.DataFrame, feature_names: Sequence[str], names: Mapping[str, str]
) -> tuple[list[str], list[NotLogged]]:
    """Features both sides carry (compared), and those a side does not carry at all (not logged).

    A column that is absent is "not logged" (e.g. the scoring log of a service older than the model's
    inputs); a column that is present but empty is logged as missing, and its missing rate is compared.
    """
    compared: list[str] = []
    absent: list[NotLogged] = []
    for name in feature_names:
        in_ref, in_cur = name in reference.columns, name in current.columns
        if in_ref and in_cur:
            compared.append(name)
            continue
        side: Literal["reference", "current", "both"] = (
            "both" if not (in_ref or in_cur) else "current" if in_ref else "reference"
        )
        absent.append(NotLogged(name, names.get(name, name), side))
    return compared, absent


def features_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    feature_names: Sequence[str],
    th: DriftThresholds,
    names: Mapping[str, str],
) -> list[FeatureDrift]:
    """Every feature both sides carry, compared as its catalog treatment says, most drifted first."""
    # One test per feature: Bonferroni keeps a hundred-odd comparisons from crying wolf together.
    family = max(len(feature_names), 1)
    per_feature = replace(th, p_amber=th.p_amber / family, p_red=th.p_red / family)
    out: list[FeatureDrift] = []
    for name in feature_names:
        how = treatment(name)
        ref = compared_values(numeric(reference, name), how)
        cur = compared_values(numeric(current, name), how)
        drift = feature_drift(ref, cur, name, per_feature)
        out.append(
            replace(drift, display_name=names.get(name, name), comparison=how.comparison, rate=how.rate)
        )
    out.sort(key=lambda f: (-_SEVERITY[f.status], -f.psi, f.name))
    return out


# ---------------------------------------------------------------------------------------------------
# signals and labels


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


@dataclass(frozen=True)
class _LabelSide:
    """One side's labeled rows (``y`` 1.0 abuse / 0.0 legit, ``pattern`` when known)."""

    share: float
    delay_hours: float
    y: pd.Series
    pattern: pd.Series | None


def _label_side(frame: pd.DataFrame) -> _LabelSide:
    if "label" not in frame.columns:
        return _LabelSide(0.0, float("nan"), pd.Series(dtype=float), None)
    y = _labels_numeric(frame)
    labeled = y.notna()
    delay = float("nan")
    if "label_ts" in frame.columns and "ts" in frame.columns:
        gap = pd.to_datetime(frame["label_ts"], utc=True) - pd.to_datetime(frame["ts"], utc=True)
        hours = gap[labeled].dt.total_seconds() / 3600
        if hours.notna().any():
            delay = float(hours.median())
    pattern = frame.loc[labeled, "pattern"].astype("string") if "pattern" in frame.columns else None
    return _LabelSide(float(labeled.mean()), delay, y[labeled], pattern)


def _rate(side: _LabelSide, pattern: str | None) -> tuple[int | None, float]:
    if pattern is None:
        y = side.y
    elif side.pattern is None:
        return None, float("nan")
    else:
        y = side.y[(side.pattern == pattern).fillna(False).to_numpy()]
    return int(y.size), float(y.mean()) if y.size else float("nan")


def label_summary(reference: pd.DataFrame, current: pd.DataFrame) -> LabelSummary:
    """Share of rows labeled, median label delay in hours, and the abuse rate overall and per pattern.

    ``pattern`` is simulator ground truth: the scoring log never has it, and a side without it shows no
    per-pattern counts rather than failing.
    """
    if "label" not in reference.columns and "label" not in current.columns:
        return LabelSummary(False, 0.0, 0.0, float("nan"), float("nan"), [])
    ref, cur = _label_side(reference), _label_side(current)
    patterns = sorted({str(p) for s in (ref, cur) if s.pattern is not None for p in s.pattern.dropna()})
    rows: list[PatternRate] = []
    for key in (None, *patterns):
        (n_ref, r_ref), (n_cur, r_cur) = _rate(ref, key), _rate(cur, key)
        rows.append(PatternRate(key or "all labeled", n_ref, n_cur, r_ref, r_cur))
    return LabelSummary(True, ref.share, cur.share, ref.delay_hours, cur.delay_hours, rows)


# ---------------------------------------------------------------------------------------------------
# the badge and the summary


def acted_on_status(result: DriftResult) -> Status:
    """The status of what the fraud team acts on: scores, decisions, bands, fallback, promotions."""
    return worst(
        [result.score.status, result.fallback.status]
        + [c.status for c in (*result.decisions, *result.bands)]
        + [g.status for g in result.groups]
    )


def overall_status(result: DriftResult) -> Status:
    """The badge: what the fraud team acts on; red features or failed data checks raise it to amber."""
    explains = [f.status for f in result.features] + ["red" if result.violations else "green"]
    capped: Status = "amber" if worst(explains) == "red" else "green"
    return worst([acted_on_status(result), capped])


def pct(share: float) -> str:
    """A share as a short percentage: 0.04 -> '4%', 0.092 -> '9.2%', 0.0004 -> '0.04%'."""
    if not math.isfinite(share):
        return "n/a"
    value = 100 * share
    if value == 0 or abs(value) >= 10:
        return f"{value:.0f}%"
    text = f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") + "%"


def names_list(items: Sequence[str], limit: int = 3) -> str:
    """``a, b, c and 4 more``."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _moved(change: ShareChange) -> str:
    return f"{pct(change.share_reference)} -> {pct(change.share_current)}"


def _score_finding(result: DriftResult) -> str | None:
    s = result.score
    if s.status == "green":
        return None
    return (
        f"the score distribution shifted (PSI {s.psi:.2f}): mean score "
        f"{s.mean_reference:.1f} then, {s.mean_current:.1f} now"
    )


def _largest_moves(changes: Sequence[ShareChange], limit: int = 2) -> list[ShareChange]:
    moved = [c for c in changes if c.status != "green"]
    return sorted(moved, key=lambda c: (-_SEVERITY[c.status], -abs(c.delta_pp)))[:limit]


def _mix_finding(result: DriftResult) -> str | None:
    """The two largest decision moves and the two largest band moves (the tables have the rest)."""
    parts = [
        f"{_DECISION_WORDS.get(c.name, repr(c.name))} {_moved(c)}" for c in _largest_moves(result.decisions)
    ]
    parts += [f"{c.name} band {_moved(c)}" for c in _largest_moves(result.bands)]
    if not parts:
        return None
    return "decisions and bands moved: " + "; ".join(parts)


def _fallback_finding(result: DriftResult) -> str | None:
    fb = result.fallback
    if fb.status == "green":
        return None
    return (
        f"the rules fallback answered {pct(fb.rate_current)} of requests "
        f"(reference {pct(fb.rate_reference)}): check model and feature-store health"
    )


def _group_shift(g: GroupDrift) -> str:
    name = g.value if g.dimension != "other codes" else "other codes"
    return f"{name} {pct(g.flagged_share_reference)} -> {pct(g.flagged_share_current)}"


def _type_finding(promo_type: str, moved: Sequence[GroupDrift]) -> str:
    """One promotion type that moved, with its codes that moved in parentheses."""
    own = next((g for g in moved if g.dimension == "promo_type"), None)
    text = _group_shift(own) if own is not None else promo_type
    codes = [_group_shift(g) for g in moved if g.dimension != "promo_type"]
    return text + (f" ({names_list(codes, 2)})" if codes else "")


def _group_finding(result: DriftResult) -> str | None:
    moved = sorted(
        (g for g in result.groups if g.status != "green"),
        key=lambda g: (-_SEVERITY[g.status], -abs(g.delta_pp)),
    )
    if not moved:
        return None
    # One entry per promotion type, the type that moved most first; its codes ride along.
    types = list(dict.fromkeys(g.promo_type for g in moved))
    parts = [_type_finding(t, [g for g in moved if g.promo_type == t]) for t in types]
    return "promotions moved (share sent to verification or refused): " + names_list(parts)


def _feature_finding(result: DriftResult) -> str | None:
    moved = [f for f in result.features if f.status != "green"]
    if not moved:
        return None
    red = sum(f.status == "red" for f in moved)
    plural = "s" if len(moved) != 1 else ""
    led = ", ".join(f.display_name or f.name for f in moved[:3])
    return f"{len(moved)} feature{plural} moved ({red} red, {len(moved) - red} amber), led by {led}"


def _checks_finding(result: DriftResult) -> str | None:
    if not result.violations:
        return None
    cols = sorted({v.column for v in result.violations})
    return f"{len(result.violations)} data check(s) failed on the current window: {names_list(cols)}"


def summarize(result: DriftResult) -> list[str]:
    """At most :data:`MAX_FINDINGS` plain-words findings, in the order the fraud team acts on them."""
    builders = (
        _score_finding,
        _mix_finding,
        _fallback_finding,
        _group_finding,
        _feature_finding,
        _checks_finding,
    )
    findings = [line for build in builders if (line := build(result)) is not None]
    if not findings:
        return ["no drift: scores, decisions, promotions and features match the reference"]
    return findings[:MAX_FINDINGS]


def notes(result: DriftResult) -> list[str]:
    """Context under the findings: features a side does not log, and how far labels have arrived."""
    lines: list[str] = []
    current = [n.display_name for n in result.not_logged if n.missing_from == "current"]
    if current:
        lines.append(
            f"{len(current)} model feature(s) are not in the current window, so not compared: "
            + names_list(current, 6)
        )
    other = [n.display_name for n in result.not_logged if n.missing_from != "current"]
    if other:
        lines.append(
            f"{len(other)} feature(s) are not in the reference, so not compared: {names_list(other, 6)}"
        )
    lab = result.labels
    if lab.available:
        delay = lab.median_delay_hours_current
        delay_text = f", median delay {delay:.0f} h" if math.isfinite(delay) else ""
        lines.append(
            f"labels: {pct(lab.labeled_share_current)} of current requests labeled so far{delay_text}"
        )
    return lines


def finalize(result: DriftResult) -> DriftResult:
    """The result with its badge, findings and notes worked out from its sections."""
    settled = replace(result, status=overall_status(result))
    return replace(settled, summary=summarize(settled), notes=notes(settled))


# ---------------------------------------------------------------------------------------------------
# the one pure entry point


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    feature_names: Sequence[str],
    thresholds: DriftThresholds | None = None,
    *,
    display_names: Mapping[str, str] | None = None,
) -> DriftResult:
    """Compare a current scoring frame with the reference: scores, mix, promotions, features, signals, labels.

    ``display_names`` maps a feature to the name the fraud team knows (the model manifest's signal
    names, see :func:`monitoring.catalog.display_names`). Raises ValueError naming the side and field
    when a frame lacks ``score``/``band``/``decision`` or has a non-numeric score. A model feature one
    side does not carry is listed as not logged, never as drift.
    """
    th = thresholds or DriftThresholds()
    names = dict(display_names or {})
    ref = check_frame(reference, "reference")
    cur = check_frame(current, "current")
    compared, not_logged = split_logged(ref, cur, feature_names, names)
    result = DriftResult(
        status="green",
        summary=[],
        generated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        n_reference=len(ref),
        n_current=len(cur),
        score=score_drift(ref, cur, th),
        decisions=mix_drift(ref, cur, "decision", DECISIONS, th),
        bands=mix_drift(ref, cur, "band", BANDS, th),
        fallback=fallback_drift(ref, cur, th),
        groups=group_drift(ref, cur, th),
        features=features_drift(ref, cur, compared, th, names),
        signals=signal_drift(ref, cur, th),
        labels=label_summary(ref, cur),
        thresholds=th,
        not_logged=not_logged,
    )
    return finalize(result)


def with_violations(result: DriftResult, violations: Sequence[Violation]) -> DriftResult:
    """Attach data-validation failures: they raise the status to at least amber and join the findings."""
    if not violations:
        return result
    return finalize(replace(result, violations=list(violations)))


def exit_code(result: DriftResult) -> ExitCode:
    """Process exit status for schedulers: 0 green, 1 amber (look this week), 2 red (look today)."""
    return ExitCode(_SEVERITY[result.status])
