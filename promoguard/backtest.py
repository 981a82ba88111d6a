"""``promoguard backtest``: the edges of a replay (files, the registry, MLflow) around :mod:`replay`.

It reads the raw history and the feature build, picks the window, builds one :class:`Replayer` per
configuration (a registered model version or the champion, a rules table, or the rules alone),
replays warm-up and window through the service's decision path, and writes the ledger as
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


def run_backtest(
    settings: Settings,
    *,
    window: Window,
    configurations: list[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Replay the window once per configuration and return the report (see :mod:`replay.report`)."""
    from config.resolver import identity_resolver
    from features.definitions import feature_views
    from features.pipeline import pre_event_features
    from replay.engine import PointInTimeOnline, replay
    from replay.ledger import VERIFY_STOPS, agreement, attempts_frame, campaign_ledger, totals, type_ledger
    from replay.requests import request_bodies

    history = _history(settings)
    events: pd.DataFrame = history["events"]
    ts = pd.to_datetime(events["ts"], utc=True)
    lo = window.warm_start if window.warm_start is not None else ts.min()
    chosen = events[(ts >= lo) & (ts < window.end)].reset_index(drop=True)
    warm = int((pd.to_datetime(chosen["ts"], utc=True) < window.start).sum())
    keys = history["keys"].set_index("request_id").loc[chosen["request_id"]].reset_index()
    frames = {v.name: pd.read_parquet(settings.features_dir / f"{v.name}.parquet") for v in feature_views()}
    features = pre_event_features(keys, frames)
    features.insert(0, "request_id", keys["request_id"].to_numpy())
    online = PointInTimeOnline(features)
    del frames, features
    bodies = request_bodies(chosen, history["promotions"])
    outcomes = chosen["outcome"].astype(str).tolist()
    resolver = identity_resolver(settings)
    runs: list[dict[str, Any]] = []
    decisions: list[pd.DataFrame] = []
    with ExitStack() as stack:
        for name in configurations:
            replayer = stack.enter_context(replayer_for(settings, name, resolver))

            def tick(done: int, name: str = name) -> None:
                if progress is not None:
                    progress(name, done, len(bodies))

            answers = replay(
                bodies, outcomes, online, replayer, warm=warm, work_dir=_work_dir(), progress=tick
            )
            frame = attempts_frame(
                answers, chosen, history["promotions"], history["truth"], history["labels"]
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
                    "degraded_share": float(answers["degraded"].mean()) if len(answers) else None,
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
            rows.append(
                {
                    "configuration": r["name"],
                    "promo_type": t["promo_type"],
                    "attempts": t["attempts"],
                    "refused": t["refused"],
                    "verified": t["verified"],
                    "recall": t["recall"],
                    "honest_refused": t["honest_refused"],
                    "honest_verified": t["honest_verified"],
                    "saved": t["discount_saved"],
                    "lost": t["discount_lost"],
                }
            )
    return pd.DataFrame(rows)
