"""Shadow scoring: a challenger scores a share of live requests off the request path, on the same inputs."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from config.settings import Settings
from scoring.artifact import LoadedModel
from scoring.records import Records
from scoring.rules import DEFAULT_RULES_PATH, load_rules
from scoring.schemas import ScoreRequest, ScoreResponse
from scoring.scorer import Scorer, ScorerConfig
from scoring.shadow import Challenger
from serving.model_cache import fetch_version
from serving.shadow import ShadowRunner, in_shadow, load_challenger, start_shadow
from tests.scoring.conftest import FakeOnline, FakeResolver, FakeVelocity

#: The tiny model scores 77-79 here: verify under its own thresholds, watch under the challenger's.
FEATURES = {"device_stats__distinct_accounts_24h": 6.0, "household_stats__distinct_accounts_30d": 2.0,
            "code_stats__attempts_1h": 1.0}


@pytest.fixture(scope="module")
def live_model(artifact_dir: Path) -> LoadedModel:
    return LoadedModel.from_dir(artifact_dir)


@pytest.fixture(scope="module")
def challenger_model(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """Version 8: the same booster under more lenient thresholds (verify from 80)."""
    target = tmp_path_factory.mktemp("challenger") / "model"
    shutil.copytree(artifact_dir, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["model_version"] = "8"
    manifest["thresholds"] = {"default": {"watch": 30, "verify": 80, "refuse": 90}}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return LoadedModel.from_dir(target)


class CallLog(FakeVelocity):
    """A velocity store that remembers every call made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def record(self, request_id: str, ts: float, updates: Any) -> bool:
        self.calls.append(("record", request_id))
        return super().record(request_id, ts, updates)

    def read(self, queries: Any) -> list[int]:
        self.calls.append(("read", str(len(queries))))
        return super().read(queries)

    def reserve(self, request_id: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("reserve", request_id))
        return super().reserve(request_id, *args, **kwargs)

    def release(self, request_id: str, *, confirmed: bool = False) -> bool:
        self.calls.append(("release", request_id))
        return super().release(request_id, confirmed=confirmed)


class GatedModel:
    """A challenger model that waits for ``gate`` before it explains (a slow shadow worker)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def explain(self, x: np.ndarray) -> Any:
        self.entered.set()
        assert self.gate.wait(20), "the test never opened the gate"
        return self.model.explain(x)


class RaisingModel(GatedModel):
    """A challenger model that fails on every request."""

    def explain(self, x: np.ndarray) -> Any:
        raise RuntimeError("challenger booster is broken")


def _req(request_id: str, **promo: Any) -> ScoreRequest:
    return ScoreRequest.model_validate({
        "request_id": request_id,
        "promotion": {"code": f"CODE{int(request_id.split('-')[-1]) % 3}", "type": "intro_offer", **promo},
        "account": {"account_id": f"acct-{request_id}"},
        "email": "someone@example.com",
        "device": {"device_id": "dev-1234abcd"},
        "ip": "198.51.100.7",
    })


def _scorer(path: Path, model: LoadedModel | None, velocity: Any = None, **config: Any) -> Scorer:
    return Scorer(FakeResolver(), FakeOnline(FEATURES), velocity if velocity is not None else FakeVelocity(),
                  model, load_rules(DEFAULT_RULES_PATH), Records(path),
                  ScorerConfig(feature_deadline_ms=5000.0, request_deadline_ms=10000.0, **config))


def _shadow_rows(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM shadow ORDER BY request_id")]


def _answer(resp: ScoreResponse) -> dict[str, Any]:
    return resp.model_dump(exclude={"latency_ms"})


@pytest.fixture
def runners() -> Iterator[list[ShadowRunner]]:
    made: list[ShadowRunner] = []
    yield made
    for runner in made:
        runner.close(timeout_s=1)


def test_challenger_decisions_are_logged_for_the_configured_share(
    tmp_path: Path, live_model: LoadedModel, challenger_model: LoadedModel, runners: list[ShadowRunner]
) -> None:
    scorer = _scorer(tmp_path / "scores.db", live_model)
    runner = ShadowRunner(scorer, Challenger(model=challenger_model), share=0.3, queue_size=1000)
    runners.append(runner)
    scorer.on_scored = runner.submit
    ids = [f"r-{i}" for i in range(100)]
    answers = [scorer.score(_req(i)) for i in ids]
    assert runner.wait()
    rows = _shadow_rows(scorer.records.path)
    assert {r["request_id"] for r in rows} == {i for i in ids if in_shadow(i, 0.3)}
    assert 15 < len(rows) < 45 and runner.logged == len(rows) and runner.dropped == 0
    assert {a.decision for a in answers} == {"verify"}
    for row in rows:
        assert (row["live_decision"], row["live_model_version"], row["live_explored"]) == ("verify", "7", 0)
        assert (row["challenger_decision"], row["challenger_model_version"]) == ("watch", "8")
        # One booster: the same score on the same inputs, decided under other thresholds.
        assert row["challenger_score"] == row["live_score"] and row["challenger_fallback"] is None
        assert row["challenger_rules_version"] == row["live_rules_version"] == scorer.rules.label
    # A retry is answered from the log and not shadowed twice.
    scorer.score(_req(rows[0]["request_id"]))
    assert runner.wait() and scorer.records.count("shadow") == len(rows)


def test_the_challenger_scores_the_live_inputs_and_touches_no_velocity_or_reservation(
    tmp_path: Path, live_model: LoadedModel, challenger_model: LoadedModel, runners: list[ShadowRunner]
) -> None:
    requests = [_req(f"r-{i}", per_customer_limit=2) for i in range(6)]
    alone = CallLog()
    plain = _scorer(tmp_path / "plain.db", live_model, alone)
    expected = [_answer(plain.score(r)) for r in requests]
    shadowed = CallLog()
    scorer = _scorer(tmp_path / "shadowed.db", live_model, shadowed)
    runner = ShadowRunner(scorer, Challenger(model=challenger_model), share=1.0, queue_size=100)
    runners.append(runner)
    scorer.on_scored = runner.submit
    assert [_answer(scorer.score(r)) for r in requests] == expected
    assert runner.wait()
    assert shadowed.calls == alone.calls and ("reserve", "r-0") in alone.calls
    # The challenger's answers are what a service running it would have answered on the same history.
    reference = _scorer(tmp_path / "reference.db", challenger_model, CallLog())
    wanted = {r.request_id: reference.score(r) for r in requests}
    rows = _shadow_rows(scorer.records.path)
    assert len(rows) == len(requests)
    for row in rows:
        want = wanted[row["request_id"]]
        assert (row["challenger_score"], row["challenger_decision"]) == (want.score, want.decision)


def test_a_rules_challenger_decides_with_its_own_table_and_the_live_model(
    tmp_path: Path, live_model: LoadedModel, runners: list[ShadowRunner]
) -> None:
    table = yaml.safe_load(DEFAULT_RULES_PATH.read_text())
    table["version"] = "challenger.1"
    table["rules"].append({
        "id": "shared_device_refused", "code": "CUSTOM_RULE", "description": "device shared by many accounts",
        "when": {"gte": ["device_stats__distinct_accounts_24h", 5]}, "points": 50, "action": "refuse",
        "source": "rule", "applies_to": ["all"],
    })
    path = tmp_path / "challenger.yaml"
    path.write_text(yaml.safe_dump(table))
    rules = load_rules(path)
    scorer = _scorer(tmp_path / "scores.db", live_model)
    runner = ShadowRunner(scorer, Challenger(rules=rules), share=1.0, queue_size=100)
    runners.append(runner)
    scorer.on_scored = runner.submit
    for i in range(3):
        assert scorer.score(_req(f"r-{i}")).decision == "verify"
    assert runner.wait()
    rows = _shadow_rows(scorer.records.path)
    assert len(rows) == 3
    for row in rows:
        assert row["challenger_decision"] == "refuse"
        assert row["challenger_deciding_rule"] == "shared_device_refused"
        assert row["challenger_rules_version"] == rules.label != row["live_rules_version"]
        assert row["challenger_model_version"] == row["live_model_version"] == "7"


def test_a_full_queue_drops_shadow_work_and_counts_it_never_a_live_answer(
    tmp_path: Path, live_model: LoadedModel, challenger_model: LoadedModel, runners: list[ShadowRunner]
) -> None:
    requests = [_req(f"r-{i}") for i in range(10)]
    plain = _scorer(tmp_path / "plain.db", live_model)
    expected = [_answer(plain.score(r)) for r in requests]
    slow = GatedModel(challenger_model)
    scorer = _scorer(tmp_path / "scores.db", live_model)
    drops: list[int] = []
    runner = ShadowRunner(scorer, Challenger(model=slow), share=1.0, queue_size=2, batch=1,  # type: ignore[arg-type]
                          on_drop=lambda: drops.append(1))
    runners.append(runner)
    scorer.on_scored = runner.submit
    got: list[dict[str, Any]] = []

    def answer_all() -> None:
        got.append(_answer(scorer.score(requests[0])))
        # The worker now holds the first request and does not come back for more.
        assert slow.entered.wait(10)
        got.extend(_answer(scorer.score(r)) for r in requests[1:])

    live = threading.Thread(target=answer_all)
    live.start()
    live.join(20)
    # Every live answer came back while the shadow worker was stuck: submitting never waits for it.
    assert not live.is_alive() and not slow.gate.is_set()
    assert got == expected
    assert (runner.submitted, runner.dropped, len(drops)) == (3, 7, 7)
    slow.gate.set()
    assert runner.wait()
    assert scorer.records.count("shadow") == 3 and runner.logged == 3


def test_the_live_answer_is_unchanged_when_the_challenger_model_raises(
    tmp_path: Path, live_model: LoadedModel, challenger_model: LoadedModel, runners: list[ShadowRunner]
) -> None:
    requests = [_req(f"r-{i}") for i in range(5)]
    plain = _scorer(tmp_path / "plain.db", live_model)
    expected = [_answer(plain.score(r)) for r in requests]
    scorer = _scorer(tmp_path / "scores.db", live_model)
    runner = ShadowRunner(scorer, Challenger(model=RaisingModel(challenger_model)),  # type: ignore[arg-type]
                          share=1.0, queue_size=100)
    runners.append(runner)
    scorer.on_scored = runner.submit
    assert [_answer(scorer.score(r)) for r in requests] == expected
    assert runner.wait()
    rows = _shadow_rows(scorer.records.path)
    # The challenger's rules answered for it, as on the live path, and the row says so.
    assert len(rows) == 5 and runner.failed == 0
    assert {(r["challenger_fallback"], r["challenger_model_version"]) for r in rows} == {("rules", None)}


def test_a_challenger_that_fails_outright_is_counted_and_the_live_answer_stands(
    tmp_path: Path, live_model: LoadedModel, challenger_model: LoadedModel, runners: list[ShadowRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests = [_req(f"r-{i}") for i in range(4)]
    plain = _scorer(tmp_path / "plain.db", live_model)
    expected = [_answer(plain.score(r)) for r in requests]
    scorer = _scorer(tmp_path / "scores.db", live_model)

    def broken(*_: Any) -> Any:
        raise RuntimeError("challenger is broken")

    monkeypatch.setattr(scorer, "challenger_verdict", broken)
    errors: list[int] = []
    runner = ShadowRunner(scorer, Challenger(model=challenger_model), share=1.0, queue_size=100,
                          on_error=lambda: errors.append(1))
    runners.append(runner)
    scorer.on_scored = runner.submit
    assert [_answer(scorer.score(r)) for r in requests] == expected
    assert runner.wait()
    assert (runner.failed, len(errors), scorer.records.count("shadow")) == (4, 4, 0)


def test_the_shadow_logs_the_live_policy_decision_of_an_explored_attempt(
    tmp_path: Path, live_model: LoadedModel, challenger_model: LoadedModel, runners: list[ShadowRunner]
) -> None:
    scorer = _scorer(tmp_path / "scores.db", live_model, exploration={"default": 1.0})
    runner = ShadowRunner(scorer, Challenger(model=challenger_model), share=1.0, queue_size=100)
    runners.append(runner)
    scorer.on_scored = runner.submit
    assert scorer.score(_req("r-1")).decision == "allow"
    assert runner.wait()
    (row,) = _shadow_rows(scorer.records.path)
    assert (row["live_decision"], row["live_explored"], row["challenger_decision"]) == ("verify", 1, "watch")


def test_a_closed_runner_takes_no_more_work(tmp_path: Path, live_model: LoadedModel) -> None:
    scorer = _scorer(tmp_path / "scores.db", live_model)
    runner = ShadowRunner(scorer, Challenger(model=live_model), share=1.0, queue_size=10)
    scorer.on_scored = runner.submit
    scorer.score(_req("r-1"))
    runner.close()
    scorer.score(_req("r-2"))
    assert scorer.records.count("shadow") == 1 and runner.submitted == 1
    with pytest.raises(ValueError, match="share"):
        ShadowRunner(scorer, Challenger(), share=1.5, queue_size=10)


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({f"PROMOGUARD_{k.upper()}": v for k, v in env.items()}, root=tmp_path)


def test_the_challenger_is_built_from_the_settings_and_hooked_to_the_scorer(
    tmp_path: Path, live_model: LoadedModel
) -> None:
    rules_file = tmp_path / "rules.yaml"
    shutil.copy(DEFAULT_RULES_PATH, rules_file)
    scorer = _scorer(tmp_path / "scores.db", live_model)
    # Off: no share, or a share without a challenger, or a challenger that cannot be loaded.
    assert start_shadow(_settings(tmp_path, shadow_rules=str(rules_file)), scorer) is None
    assert start_shadow(_settings(tmp_path, shadow_share="0.5"), scorer) is None
    missing_rules = _settings(tmp_path, shadow_share="0.5", shadow_rules=str(tmp_path / "none"))
    assert load_challenger(missing_rules) is None
    unreachable = _settings(tmp_path, shadow_share="0.5", shadow_model="3",
                            mlflow_uri="unreachable-registry://nowhere")
    assert load_challenger(unreachable) is None
    assert scorer.on_scored is None
    runner = start_shadow(
        _settings(tmp_path, shadow_share="0.25", shadow_rules=str(rules_file), shadow_queue="7"), scorer
    )
    assert runner is not None
    try:
        assert runner.share == 0.25 and runner.challenger.model is None
        assert runner.challenger.rules is not None and runner.challenger.rules.label == scorer.rules.label
        assert scorer.on_scored == runner.submit
    finally:
        runner.close()


def test_a_registered_version_or_alias_is_fetched_into_its_own_cache(
    tmp_path: Path, artifact_dir: Path
) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("shadow", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(artifact_dir), "model")
    client.create_registered_model("promo-abuse")
    version = client.create_model_version(
        "promo-abuse", source=f"{client.get_run(run_id).info.artifact_uri}/model", run_id=run_id
    ).version
    client.set_registered_model_alias("promo-abuse", "challenger", version)
    cache = tmp_path / "cache"
    by_alias = fetch_version(uri, "promo-abuse", "challenger", cache)
    assert by_alias == cache / str(version)
    assert LoadedModel.from_dir(by_alias).version == "7"
    # A cached version is used without asking the registry again.
    assert fetch_version("unreachable-registry://nowhere", "promo-abuse", str(version), cache) == by_alias
    settings = _settings(tmp_path, shadow_share="0.1", shadow_model="challenger", mlflow_uri=uri)
    challenger = load_challenger(settings)
    assert challenger is not None and challenger.model is not None and challenger.rules is None
    # Not the champion's cache: a challenger never becomes the champion's fallback.
    assert not (tmp_path / "data" / "serving" / "models").exists()
