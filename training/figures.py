"""The run's figures as PNG files: precision-recall curves, a reliability diagram, score histograms.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display), so they work
headless and in parallel test workers. Each function writes one file and returns its path; the run
logs them through :func:`training.registry.log_training_run`'s ``figures``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve

_DPI = 90


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI, format="png")
    return path


def pr_curves_png(
    prob: np.ndarray,
    targets: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    *,
    title: str = "precision-recall on the test window",
) -> Path:
    """One precision-recall curve per target: ``{name: (rows_with_target, y)}`` (e.g. label and truth)."""
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    p = np.asarray(prob, dtype=np.float64)
    for name, (known, y) in targets.items():
        yk, pk = np.asarray(y)[known], p[known]
        if not 0 < yk.sum() < len(yk):
            continue
        precision, recall, _ = precision_recall_curve(yk, pk)
        ap = average_precision_score(yk, pk)
        ax.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f}, {int(yk.sum())} positives)")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def reliability_png(
    prob: np.ndarray,
    targets: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    *,
    bins: int = 10,
    title: str = "reliability on the test window",
) -> Path:
    """Reliability diagram: observed abuse rate against mean predicted probability per equal-width bin.

    One line per target (``{name: (rows_with_target, y)}``); marker size grows with the bin's rows.
    Below it, a log-scale histogram of the probabilities shows where the rows are.
    """
    fig = Figure(figsize=(6, 6.5))
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    p = np.asarray(prob, dtype=np.float64)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfectly calibrated")
    for name, (known, y) in targets.items():
        pk, yk = p[known], np.asarray(y, dtype=np.float64)[known]
        idx = np.clip((pk * bins).astype(np.int64), 0, bins - 1)
        xs, ys, ns = [], [], []
        for b in range(bins):
            m = idx == b
            if m.any():
                xs.append(pk[m].mean())
                ys.append(yk[m].mean())
                ns.append(m.sum())
        size = 10 + 90 * np.sqrt(np.asarray(ns, dtype=np.float64) / max(max(ns, default=1), 1))
        ax.plot(xs, ys, marker="o", lw=1, label=name)
        ax.scatter(xs, ys, s=size, alpha=0.4)
    ax.set(ylabel="observed abuse rate", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hist.hist(p, bins=bins * 5, range=(0, 1), color="tab:blue", alpha=0.6)
    hist.set(yscale="log", xlabel="calibrated probability", ylabel="rows")
    return _save(fig, path)


def score_histograms_png(
    scores: np.ndarray,
    groups: Sequence[tuple[str, np.ndarray]],
    path: Path,
    *,
    thresholds: Sequence[tuple[str, float]] = (),
    title: str = "test-window scores per truth pattern",
) -> Path:
    """Small multiples: the 0-100 score histogram of each ``(name, row mask)`` group (patterns, honest).

    ``thresholds`` draws vertical lines (e.g. the default verify and refuse thresholds).
    """
    s = np.asarray(scores, dtype=np.float64)
    shown = [(name, m) for name, m in groups if np.asarray(m).any()]
    cols = 3
    rows = max(1, -(-len(shown) // cols))
    fig = Figure(figsize=(4 * cols, 2.4 * rows))
    fig.suptitle(title)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (name, m) in zip(axes, shown, strict=False):
        ax.hist(
            s[np.asarray(m)], bins=np.arange(0, 102, 2), color="tab:red" if name != "honest" else "tab:green"
        )
        for label, t in thresholds:
            ax.axvline(t, color="black", lw=0.8, ls=":" if label == "verify" else "--")
        ax.set_title(f"{name} ({int(np.asarray(m).sum())} rows)", fontsize=9)
        ax.set_xlim(0, 101)
        ax.set_yscale("log")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    return _save(fig, path)
