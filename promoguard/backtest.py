"""``promoguard backtest``: the edges of a replay (files, the registry, MLflow) around :mod:`replay`.

It reads the raw history and the feature build (through Feast's Spark offline store under the
``spark`` offline-store profile, see :func:`history_features`), picks the window, builds one
:class:`Replayer` per configuration (a registered model version or the champion, a rules table, or the
rules alone), replays warm-up and window through the service's decision path, and writes the ledger as
``data/reports/backtest-<timestamp>.json`` and ``.html``, also logged to MLflow as a run of its own.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from promoguard.settings import Settings

#: MLflow experiment that backtests are logged under.
EXPERIMENT = "promo-abuse-backtest"


@dataclass(frozen=True)
class Window:
    """The replayed time range and the warm-up before it."""

    start: pd.Timestamp
    end: pd.Timestamp
    warm_start: pd.Timestamp | None


def choose_window(
    ts: pd.Series, *, days: float | None, start: str | None, end: str | None, warm_days: float | None
) -> Window:
    """The window from ``--days`` (the last N days) or ``--start/--end``; the warm-up precedes it.

    ``warm_days`` None warms on all earlier history. Raise ValueError naming the option when the
    window is empty or the options contradict each other.
    """
    if days is not None and (start is not None or end is not None):
        raise ValueError("--days: give either --days or --start/--end, not both")
    last = pd.Timestamp(ts.max()) + pd.Timedelta(microseconds=1)
    stop = pd.Timestamp(end, tz="UTC") if end is not None else last
    if days is not None:
        if days <= 0:
            raise ValueError(f"--days: must be positive, got {days}")
        begin = stop - pd.Timedelta(days=days)
    elif start is not None:
        begin = pd.Timestamp(start, tz="UTC")
    else:
        raise ValueError("--days: give --days N or --start (and optionally --end)")
    if begin >= stop:
        raise ValueError(f"--start: {begin.isoformat()} is not before --end {stop.isoformat()}")
    inside = (ts >= begin) & (ts < stop)
    if not inside.any():
        raise ValueError(f"--start/--end: no event between {begin.isoformat()} and {stop.isoformat()}")
    warm = None if warm_days is None else begin - pd.Timedelta(days=warm_days)
    return Window(begin, stop, warm)


def _work_dir() -> Path | None:
    """Memory-backed scratch space when the machine has one: the replayed stores commit every attempt."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and shm.stat().st_mode & 0o002 else None


@contextmanager
def replayer_for(settings: Settings, configuration: str, resolver: Any) -> Iterator[Any]:
    """A :class:`replay.engine.Replayer` for ``configuration``.

    ``champion`` or a version number: that registered model with the configured rules; a path to a
    YAML file: the champion with those rules; ``rules``: the configured rules with no model.
    """
    from replay.engine import Replayer
    from scoring.artifact import LoadedModel
    from scoring.rules import default_rules, load_rules
    from training.registry import CHAMPION, load_artifact

    rules = load_rules(settings.rules_path) if settings.rules_path else default_rules()
    model_ref: str | None = CHAMPION
    if configuration == "rules":
        model_ref = None
    elif configuration.endswith((".yaml", ".yml")) or Path(configuration).is_file():
        rules = load_rules(configuration)
    else:
        model_ref = configuration
    with tempfile.TemporaryDirectory(prefix="promoguard-backtest-") as tmp:
        model = None
        if model_ref is not None:
            model_dir = load_artifact(settings.mlflow_tracking_uri, settings.model_name, model_ref, Path(tmp))
            model = LoadedModel.from_dir(model_dir)
        yield Replayer(resolver, model, rules)


def _need(path: Path, hint: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {hint}")
    return path


def _history(settings: Settings) -> dict[str, Any]:
    raw, feats = settings.raw_dir, settings.features_dir
    events = pd.read_parquet(_need(raw / "events.parquet", "run `promoguard simulate` or export your events"))
    out: dict[str, Any] = {
        "events": events.sort_values(["ts", "request_id"], kind="stable").reset_index(drop=True),
        "keys": pd.read_parquet(_need(feats / "keys.parquet", "run `promoguard features build` first")),
    }
    for name in ("promotions", "labels", "truth"):
        path = raw / f"{name}.parquet"
        out[name] = pd.read_parquet(path) if path.exists() else None
    return out


def history_features(settings: Settings, keys: pd.DataFrame) -> pd.DataFrame:
    """Each replayed attempt's own pre-event features: ``request_id``, then every ``view__feature``.

    The ``file`` profile (the default) joins the build's parquet files in process on (join keys, event
    time) (:func:`features.pipeline.pre_event_features`). The ``spark`` profile asks Feast's Spark
    offline store for the point-in-time features at each attempt's time over the same files, so a
    history too large for one machine is read where it lives; the build holds a row at every event's
    own time, so both give the same values (NaN where a key is null).
    """
    from features.definitions import feature_names, feature_views
    from features.pipeline import pre_event_features

    if settings.offline_store == "spark":
        from features.store import StoreConfig, historical_features, join_keys

        entity_df = keys[["request_id", *join_keys()]].copy()
        entity_df["event_timestamp"] = pd.to_datetime(keys["ts"], utc=True)
        found = historical_features(StoreConfig.from_settings(settings), entity_df)
        return found[["request_id", *feature_names()]]
    frames = {v.name: pd.read_parquet(settings.features_dir / f"{v.name}.parquet") for v in feature_views()}
    features = pre_event_features(keys, frames)
    features.insert(0, "request_id", keys["request_id"].to_numpy())
    return features


def run_backtest(
    settings: Settings,
    *,
    window: Window,
    configurations: list[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Replay the window once per configuration and return the report (see :mod:`replay.report`)."""
    from config.resolver import identity_resolver
    from replay.engine import PointInTimeOnline, replay_many
    from replay.ledger import VERIFY_STOPS, agreement, attempts_frame, campaign_ledger, totals, type_ledger
    from replay.requests import request_bodies

    history = _history(settings)
    events: pd.DataFrame = history["events"]
    ts = pd.to_datetime(events["ts"], utc=True)
    lo = window.warm_start if window.warm_start is not None else ts.min()
    chosen = events[(ts >= lo) & (ts < window.end)].reset_index(drop=True)
    warm = int((pd.to_datetime(chosen["ts"], utc=True) < window.start).sum())
    keys = history["keys"].set_index("request_id").loc[chosen["request_id"]].reset_index()
    features = history_features(settings, keys)
    online = PointInTimeOnline(features)
    del features
    bodies = request_bodies(chosen, history["promotions"])
    outcomes = chosen["outcome"].astype(str).tolist()
    resolver = identity_resolver(settings)
    runs: list[dict[str, Any]] = []
    decisions: list[pd.DataFrame] = []
    with ExitStack() as stack:
        replayers = [stack.enter_context(replayer_for(settings, name, resolver)) for name in configurations]

        def tick(i: int, done: int) -> None:
            if progress is not None:
                progress(configurations[i], done, len(bodies))

        answers = replay_many(
            bodies, outcomes, online, replayers, warm=warm, work_dir=_work_dir(), progress=tick
        )
        for name, replayer, answered in zip(configurations, replayers, answers, strict=True):
            frame = attempts_frame(
                answered, chosen, history["promotions"], history["truth"], history["labels"]
            )
            decisions.append(frame)
            runs.append(
                {
                    "name": name,
                    "configuration": {
                        "model_version": replayer.model_version,
                        "rules_version": replayer.rules.version,
                    },
                    "totals": totals(frame),
                    "types": type_ledger(frame),
                    "campaigns": campaign_ledger(frame),
                    "degraded_share": float(answered["degraded"].mean()) if len(answered) else None,
                }
            )
    report: dict[str, Any] = {
        "window": {
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "warm_start": lo.isoformat(),
            "attempts": len(chosen) - warm,
            "warm_attempts": warm,
        },
        "truth_source": "truth" if history["truth"] is not None else "labels as known now",
        "verify_stops": VERIFY_STOPS,
        "runs": runs,
        # The first configuration's ledger is the report's own: the JSON's top-level campaigns.
        "campaigns": runs[0]["campaigns"],
        "totals": runs[0]["totals"],
    }
    if len(decisions) > 1:
        report["compare"] = agreement(decisions[0], decisions[1], configurations[:2])
    return report


def write_report(settings: Settings, report: dict[str, Any]) -> dict[str, Path]:
    """Write ``backtest-<timestamp>.json`` and ``.html`` under ``data/reports/``; return their paths."""
    from replay.report import to_html, to_json

    out = settings.reports_dir
    out.mkdir(parents=True, exist_ok=True)
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%SZ")
    paths = {"json": out / f"backtest-{stamp}.json", "html": out / f"backtest-{stamp}.html"}
    paths["json"].write_text(to_json(report), encoding="utf-8")
    paths["html"].write_text(to_html(report), encoding="utf-8")
    return paths


def log_report(settings: Settings, report: dict[str, Any], paths: dict[str, Path]) -> str:
    """Log the backtest to MLflow as a run of its own (figures as metrics, files as artifacts)."""
    import mlflow

    from training.registry import ensure_experiment

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    # Created with the store's own artifact location: MLflow's default is ./mlruns under the cwd.
    experiment_id = ensure_experiment(settings.mlflow_tracking_uri, EXPERIMENT)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"backtest {report['window']['start'][:10]}"
    ) as run:
        mlflow.log_params({f"window.{k}": v for k, v in report["window"].items()})
        for r in report["runs"]:
            mlflow.log_params({f"{r['name']}.{k}": v for k, v in r["configuration"].items()})
            for key, value in r["totals"].items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    mlflow.log_metric(f"{r['name']}.{key}", float(value))
            for pattern, recall in (r["totals"].get("pattern_recall") or {}).items():
                if recall is not None:
                    mlflow.log_metric(f"{r['name']}.truth_recall_{pattern}", float(recall))
        for path in paths.values():
            mlflow.log_artifact(str(path))
        return str(run.info.run_id)


def summary_frame(report: dict[str, Any]) -> pd.DataFrame:
    """The stdout summary: per configuration and promotion type, decisions, recall and honest refusals."""
    rows = []
    for r in report["runs"]:
        for t in [*r["types"], {"promo_type": "all", **r["totals"]}]:
            honest = max(int(t["honest"]), 1)
            rows.append(
                {
                    "config": r["name"],
                    "type": t["promo_type"],
                    "attempts": t["attempts"],
                    "refused": t["refused"],
                    "verified": t["verified"],
                    "recall": "n/a" if t["recall"] is None else f"{t['recall']:.1%}",
                    "honest refused": f"{t['honest_refused']} ({t['honest_refused'] / honest:.2%})",
                    "honest verified": f"{t['honest_verified']} ({t['honest_verified'] / honest:.2%})",
                    "saved": round(t["discount_saved"]),
                    "lost": round(t["discount_lost"]),
                }
            )
    return pd.DataFrame(rows)


def replay_metrics(run: dict[str, Any], prefix: str) -> dict[str, float]:
    """One configuration's replayed figures as flat metrics: ``{prefix}honest_refused_rate`` and the like."""
    t = run["totals"]
    honest = max(int(t["honest"]), 1)
    out = {
        "honest_refused_rate": t["honest_refused"] / honest,
        "honest_verified_rate": t["honest_verified"] / honest,
        "truth_recall": t["recall"],
        "truth_recall_seed_patterns": t.get("recall_seed_patterns"),
        "truth_recall_bot_spray": t.get("recall_bots"),
        "discount_saved": t["discount_saved"],
        "discount_lost": t["discount_lost"],
        **{f"truth_recall_{p}": v for p, v in (t.get("pattern_recall") or {}).items()},
    }
    return {f"{prefix}{k}": float(v) for k, v in out.items() if v is not None}


def gate_figures(report: dict[str, Any]) -> dict[str, float]:
    """The promotion gate's inputs from a candidate-vs-champion replay (runs 0 and 1 of ``report``)."""
    candidate, champion = (replay_metrics(run, "") for run in report["runs"][:2])
    return {
        f"{role}_{figure}": metrics[figure]
        for role, metrics in (("candidate", candidate), ("champion", champion))
        for figure in ("honest_refused_rate", "honest_verified_rate", "truth_recall")
    }


def replay_version(
    settings: Settings,
    version: str,
    *,
    champion: str | None,
    test_start: pd.Timestamp,
    test_end: pd.Timestamp,
    warm_days: float = 7,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Replay a registered version (and the champion, when another one exists) on its own test window.

    The figures are added to the version's training run (``replay_*`` for the version,
    ``replay_champion_*`` for the champion, with ``replay.champion_version``) with the report files, so
    training's headline and the promotion gate count caps and hard rules. Returns the report.
    """
    from training.registry import add_to_run, version_run

    configurations = [version] + ([champion] if champion is not None and champion != version else [])
    window = Window(test_start, test_end, test_start - pd.Timedelta(days=warm_days))
    report = run_backtest(settings, window=window, configurations=configurations, progress=progress)
    paths = write_report(settings, report)
    metrics = replay_metrics(report["runs"][0], "replay_")
    params: dict[str, Any] = {"replay.window": f"{window.start.isoformat()} to {window.end.isoformat()}"}
    if len(report["runs"]) > 1:
        metrics.update(replay_metrics(report["runs"][1], "replay_champion_"))
        params["replay.champion_version"] = champion
    run_id, _, _ = version_run(settings.mlflow_tracking_uri, settings.model_name, version)
    files = list(paths.values())
    add_to_run(settings.mlflow_tracking_uri, run_id, metrics=metrics, params=params, files=files)
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report


def stored_gate_figures(settings: Settings, version: str, champion: str) -> dict[str, float] | None:
    """The gate's inputs from the version's training run, if it was replayed against this champion."""
    from training.registry import version_run

    _, params, metrics = version_run(settings.mlflow_tracking_uri, settings.model_name, version)
    if params.get("replay.champion_version") != str(champion):
        return None
    try:
        return {
            "candidate_honest_refused_rate": metrics["replay_honest_refused_rate"],
            "champion_honest_refused_rate": metrics["replay_champion_honest_refused_rate"],
            "candidate_honest_verified_rate": metrics["replay_honest_verified_rate"],
            "champion_honest_verified_rate": metrics["replay_champion_honest_verified_rate"],
            "candidate_truth_recall": metrics["replay_truth_recall"],
            "champion_truth_recall": metrics["replay_champion_truth_recall"],
        }
    except KeyError:
        return None


def evaluation_window(settings: Settings, version: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The test window a registered version was evaluated on (from its training run's params)."""
    from training.registry import version_run

    _, params, _ = version_run(settings.mlflow_tracking_uri, settings.model_name, version)
    return pd.Timestamp(params["window.test_start"]), pd.Timestamp(params["window.test_end"])
