"""TreeSHAP contributions, importance, plots and the signal catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.dataset import FLAG_COLUMNS
from training.explain import (
    beeswarm_png,
    contributions,
    global_importance,
    pattern_contributions,
    signal_catalog,
)
from training.train import matrix


def test_contributions_sum_to_the_raw_margin(trained: tuple, names: list[str]) -> None:
    split, booster = trained
    x = matrix(split.test.head(200), names)
    contrib = contributions(booster, x)
    assert contrib.shape == (200, len(names) + 1)
    np.testing.assert_allclose(contrib.sum(axis=1), booster.predict(x, raw_score=True), rtol=0, atol=1e-9)


# shap announces that its output shape for LightGBM binary models changed; the test reads either shape.
@pytest.mark.filterwarnings("ignore:LightGBM binary classifier with TreeExplainer:UserWarning")
def test_lightgbm_contributions_agree_with_shap_tree_explainer(trained: tuple, names: list[str]) -> None:
    import shap

    split, booster = trained
    x = matrix(split.test.head(5), names)
    ours = contributions(booster, x)
    theirs = shap.TreeExplainer(booster).shap_values(x)
    values = theirs[1] if isinstance(theirs, list) else theirs
    np.testing.assert_allclose(ours[:, :-1], values, atol=1e-6)


def test_importance_and_pattern_tables_rank_the_signal_features(trained: tuple, names: list[str]) -> None:
    split, booster = trained
    x = matrix(split.test, names)
    contrib = contributions(booster, x)
    imp = global_importance(contrib, names)
    assert list(imp.columns) == ["feature", "mean_abs_contribution"]
    assert imp["mean_abs_contribution"].is_monotonic_decreasing
    top = list(imp["feature"].head(10))
    # The synthetic frame draws abuse with shorter identity ages and more accounts per device or card:
    # those designed signals lead, ahead of the counts drawn alike for everyone.
    designed = [
        f for f in top
        if f.endswith(("first_seen_days", "hours_since_first_use", "distinct_accounts_24h", "redeemed_total"))
    ]
    assert len(designed) >= 6, top
    assert top[0].endswith("first_seen_days")
    table = pattern_contributions(contrib, names, list(split.test["pattern"]), top=5)
    assert len(table) == 5 and "legit" in table.columns


def test_beeswarm_is_written_as_png(trained: tuple, names: list[str], tmp_path: Path) -> None:
    split, booster = trained
    x = matrix(split.test.head(100), names)
    path = beeswarm_png(contributions(booster, x), x, names, tmp_path / "bee.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_signal_catalog_covers_every_feature_with_unique_names_and_a_value_slot(names: list[str]) -> None:
    cat = signal_catalog(names)
    assert list(cat) == names
    assert len({s["name"] for s in cat.values()}) == len(names)
    for feature, sig in cat.items():
        assert "{value}" in sig["description"], feature
        assert sig["description"].format(value=3)
    assert cat["device_stats__distinct_accounts_24h"]["description"].format(value=7) == (
        "device used by 7 accounts in the last 24 h"
    )
    assert "alias" in cat["email_is_alias"]["description"]
    assert set(FLAG_COLUMNS) <= set(cat)


def test_signal_catalog_refuses_an_unknown_feature() -> None:
    import pytest

    with pytest.raises(KeyError):
        signal_catalog(["device_stats__made_up"])
