"""Booster training, monotone constraints and the logistic-regression baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from training.dataset import feature_kind
from training.train import matrix, monotone_constraints, predict_proba, train_baseline


def test_constraints_are_increasing_exactly_for_the_shoppers_own_usage(names: list[str]) -> None:
    cons = dict(zip(names, monotone_constraints(names), strict=True))
    assert cons["device_stats__distinct_accounts_24h"] == 1
    assert cons["household_code_stats__redeemed_total"] == 1
    assert cons["household_stats__abuse_labels"] == 1
    # A promo code's popularity is not the shopper's doing: left free.
    assert cons["code_stats__redeemed_total"] == 0
    assert cons["device_stats__first_seen_days"] == 0
    assert cons["code_stats__new_account_share_7d"] == 0
    assert cons["email_is_alias"] == 0
    own = {n for n in names if not n.startswith("code_stats__")}
    assert all(
        (c == 1) == (n in own and feature_kind(n) in {"count", "distinct", "labels"}) for n, c in cons.items()
    )


def test_raising_any_count_feature_never_lowers_the_score(trained: tuple, names: list[str]) -> None:
    split, booster = trained
    rows = matrix(split.test.head(40), names)
    for j, c in enumerate(monotone_constraints(names)):
        if c != 1:
            continue
        for bump in (1.0, 5.0, 50.0):
            probe = rows.copy()
            probe[:, j] = np.nan_to_num(probe[:, j], nan=0.0) + bump
            floor = rows.copy()
            floor[:, j] = np.nan_to_num(floor[:, j], nan=0.0)
            assert (predict_proba(booster, probe) >= predict_proba(booster, floor) - 1e-12).all(), names[j]


def test_booster_ranks_held_out_abuse_and_stays_within_the_serving_size_budget(
    trained: tuple, names: list[str]
) -> None:
    split, booster = trained
    p = predict_proba(booster, matrix(split.test, names))
    assert roc_auc_score(split.test["label"], p) > 0.75
    assert booster.num_trees() <= 80
    assert booster.feature_name() == names


def test_baseline_gives_probabilities_that_rank_abuse(trained: tuple, names: list[str]) -> None:
    split, _ = trained
    lr = train_baseline(split.train, names)
    p = lr.predict_proba(matrix(split.test, names))[:, 1]
    assert ((p >= 0) & (p <= 1)).all()
    assert roc_auc_score(split.test["label"], p) > 0.7


def test_matrix_uses_model_order_and_marks_absent_columns_missing(names: list[str]) -> None:
    df = pd.DataFrame({names[1]: [3], names[0]: [1]})
    x = matrix(df, names)
    assert x.dtype == np.float64
    assert x[0, 0] == 1 and x[0, 1] == 3
    assert np.isnan(x[0, 2:]).all()
