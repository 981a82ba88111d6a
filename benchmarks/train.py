"""Benchmark one training run on a synthetic frame: seconds per stage, printed as one table.

Usage: ``python benchmarks/train.py [--rows 1000000] [--threads 2]``. The MLflow store is a throwaway
sqlite database in a temporary folder. Also reports exact TreeSHAP cost per single row (num_threads=1),
the figure the model-size cap in training/train.py is chosen against.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    """Run the benchmark and print the table."""
    for key in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY"):
        os.environ.setdefault(key, "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from training.dataset import synthetic_training_frame
    from training.run import train_model
    from training.train import TrainParams, matrix

    t = time.perf_counter()
    frame = synthetic_training_frame(args.rows, seed=11)
    generate = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        result = train_model(
            frame,
            tracking_uri=f"sqlite:///{tmp}/mlflow.db",
            params=TrainParams(num_threads=args.threads),
            baseline=lambda f: np.asarray(40 * f["ip_is_datacenter"] + 30 * f["email_is_alias"], dtype=float),
        )
    names = result.booster.feature_name()
    rows = matrix(result.split.test.head(300), names)
    t = time.perf_counter()
    for i in range(len(rows)):
        result.booster.predict(rows[i : i + 1], pred_contrib=True, num_threads=1)
    shap_ms = (time.perf_counter() - t) * 1000 / len(rows)

    table = [("generate (synthetic frame)", generate, f"{args.rows:,} rows x {frame.shape[1]} columns")]
    notes = {
        "validate": "Great Expectations suite",
        "split": f"train {len(result.split.train):,} / valid {len(result.split.valid):,} / "
        f"calib {len(result.split.calib):,} / test {len(result.split.test):,}",
        "train": f"{result.booster.num_trees()} trees x <=15 leaves, {args.threads} threads + logistic",
        "calibrate": "isotonic + cost thresholds",
        "evaluate": "metrics, slices, baselines, evasion",
        "explain": "TreeSHAP on 2,000 test rows + signal catalog",
        "log": "artifact, MLflow run, registration (sqlite)",
    }
    table += [(stage, secs, notes.get(stage, "")) for stage, secs in result.timings.items()]
    table.append(("treeshap per single row", shap_ms / 1000, f"{shap_ms:.3f} ms/row, num_threads=1"))
    total = sum(secs for stage, secs, _ in table if stage != "treeshap per single row")
    table.append(("total", total, f"test PR-AUC {result.metrics['test.pr_auc']:.3f}"))
    width = max(len(s) for s, _, _ in table)
    print(f"{'stage':<{width}}  {'seconds':>9}  note")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 40}")
    for stage, secs, note in table:
        print(f"{stage:<{width}}  {secs:>9.3f}  {note}")


if __name__ == "__main__":
    main()
