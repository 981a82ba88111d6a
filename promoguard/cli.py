"""The ``promoguard`` command line: a thin Typer shell over the pipeline stages."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from promoguard.settings import InvalidSettings, Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Promotional-abuse risk scoring.")
console = Console()


#: Third-party warnings no promoguard user can act on, silenced by message, each with its reason.
QUIET_WARNINGS: tuple[tuple[str, str], ...] = (
    # Feast's DuckDB offline path calls ibis, which calls DuckDB's renamed fetch_arrow_table(): a
    # library-to-library rename, printed once per feature view on apply and materialize.
    (r"fetch_arrow_table\(\) is deprecated", "ibis on DuckDB, inside Feast"),
)


@app.callback()
def _root() -> None:
    """promoguard: score promo-code attempts for abuse (simulate, features, train, promote, serve, drift)."""
    for message, _reason in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)


def _settings(root: Path | None) -> Settings:
    """This command's settings; a bad environment ends it with the message naming the variable."""
    try:
        return Settings.from_env(root=root)
    except InvalidSettings as exc:
        console.print(f"[red]invalid configuration[/red]: {exc}")
        raise typer.Exit(code=2) from None


def print_table(title: str, frame: pd.DataFrame) -> None:
    """Render a small DataFrame as a rich table (the summary every long step ends with)."""
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), justify="right" if frame[col].dtype.kind in "if" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command()
def simulate(
    events: int = typer.Option(200_000, help="Approximate number of redemption attempts to generate."),
    days: int = typer.Option(90, help="Length of the simulated history in days."),
    seed: int = typer.Option(7, help="Random seed; the same seed gives the same files."),
    root: Path | None = typer.Option(None, help="Project root holding data/ (default: current folder)."),
) -> None:
    """Generate a labeled redemption history with every abuse pattern into data/raw/."""
    from simulation.simulate import SimulationConfig, simulate_history, summarize, write_history

    settings = _settings(root)
    started = time.perf_counter()
    with console.status(f"simulating ~{events:,} attempts over {days} days"):
        history = simulate_history(SimulationConfig(n_events=events, days=days, seed=seed))
        paths = write_history(history, settings.raw_dir)
    elapsed = time.perf_counter() - started
    print_table("simulated history per pattern", summarize(history))
    console.print(
        f"wrote {len(history.events):,} events in {elapsed:.1f}s to "
        + ", ".join(str(p.relative_to(settings.root)) for p in paths.values())
    )


features_app = typer.Typer(no_args_is_help=True, help="Build, register and load the feature store.")
app.add_typer(features_app, name="features")


def _resolver(settings: Settings) -> Any:
    from config.resolver import identity_resolver

    return identity_resolver(settings)


def _need(path: Path, hint: str) -> Path:
    if not path.exists():
        console.print(f"[red]missing {path}[/red]: {hint}")
        raise typer.Exit(code=2)
    return path


@features_app.command("build")
def features_build(
    engine: str | None = typer.Option(
        None, help="numpy (default), duckdb (the SQL, in process) or spark; overrides PROMOGUARD_ENGINE."
    ),
    root: Path | None = typer.Option(None, help="Project root holding data/ (default: current folder)."),
) -> None:
    """Resolve identities and compute point-in-time aggregates into data/features/."""
    from features.context import add_context
    from features.events import validate_events, validate_labels
    from features.identity import resolve_frame
    from features.pipeline import ENGINES, build_features, row_counts, write_features
    from promoguard.offline import promotions_beside as _promotions

    settings = _settings(root)
    chosen = engine or settings.pipeline_engine
    if chosen not in ENGINES:
        raise typer.BadParameter(
            f"expected one of {', '.join(ENGINES)}, got {chosen!r}", param_hint="--engine"
        )
    events_path = _need(
        settings.raw_dir / "events.parquet", "run `promoguard simulate` or export your events"
    )
    labels_path = _need(settings.raw_dir / "labels.parquet", "labels.parquet is part of the event contract")
    started = time.perf_counter()
    with console.status("validating events and labels"):
        events = validate_events(pd.read_parquet(events_path))
        labels = validate_labels(pd.read_parquet(labels_path))
    with console.status(f"resolving identity for {len(events):,} events"):
        keys = add_context(resolve_frame(events, _resolver(settings)), _promotions(settings.raw_dir))
        del events
        settings.features_dir.mkdir(parents=True, exist_ok=True)
        keys.to_parquet(settings.features_dir / "keys.parquet", index=False)
    resolved = time.perf_counter()
    with console.status(f"computing point-in-time aggregates with {chosen}"):
        frames = build_features(keys, labels, engine=chosen)  # type: ignore[arg-type]
        write_features(frames, settings.features_dir)
    done = time.perf_counter()
    counts = row_counts(frames)
    print_table(
        "feature views",
        pd.DataFrame({"view": list(counts), "rows": list(counts.values())}),
    )
    console.print(
        f"identity {resolved - started:.1f}s, aggregates {done - resolved:.1f}s ({chosen}); "
        f"wrote {settings.features_dir.relative_to(settings.root)}/"
    )


@features_app.command("apply")
def features_apply(
    root: Path | None = typer.Option(None, help="Project root holding data/ (default: current folder)."),
) -> None:
    """Register the Feast repository (entities, views, the promo_abuse_v1 service)."""
    from features.store import StoreConfig, apply

    settings = _settings(root)
    _need(settings.features_dir, "run `promoguard features build` first")
    started = time.perf_counter()
    with console.status("applying the Feast repository"):
        views = apply(StoreConfig.from_settings(settings))
    console.print(
        f"applied {len(views)} feature views in {time.perf_counter() - started:.1f}s: {', '.join(views)}"
    )


@features_app.command("materialize")
def features_materialize(
    root: Path | None = typer.Option(None, help="Project root holding data/ (default: current folder)."),
) -> None:
    """Load the latest feature values into the online store (SQLite by default, Redis in production)."""
    from features.pipeline import default_as_of
    from features.store import StoreConfig, materialize

    settings = _settings(root)
    keys = pd.read_parquet(
        _need(settings.features_dir / "keys.parquet", "run `promoguard features build` first"), columns=["ts"]
    )
    end = default_as_of(keys).to_pydatetime()
    started = time.perf_counter()
    with console.status(
        f"materializing up to {end.isoformat()} into the {settings.online_store} online store"
    ):
        materialize(StoreConfig.from_settings(settings), end=end)
    console.print(f"materialized up to {end.isoformat()} in {time.perf_counter() - started:.1f}s")


def _truth(settings: Settings) -> pd.DataFrame | None:
    """Simulator ground truth for per-pattern evaluation (absent for a store's own export)."""
    truth_path, actors_path = settings.raw_dir / "truth.parquet", settings.raw_dir / "actors.parquet"
    if not truth_path.exists():
        return None
    truth = pd.read_parquet(truth_path).rename(columns={"is_abuse": "is_abuse_true"})
    if actors_path.exists():
        # Truth carries each row's evasion tier itself; older histories kept it on the actor only.
        wanted = ["actor_id", "trap"] + ([] if "evasion" in truth.columns else ["evasion"])
        actors = pd.read_parquet(actors_path, columns=wanted)
        truth = truth.merge(actors, on="actor_id", how="left")
    return truth


@app.command()
def train(
    root: Path | None = typer.Option(None, help="Project root holding data/ (default: current folder)."),
    test_days: float = typer.Option(14, help="Length of the test window (the most recent days)."),
    gap_days: float = typer.Option(14, help="Gap between training and later windows (the label delay)."),
    presume_legit_after: float = typer.Option(
        30, help="Days after which an unlabeled attempt counts as legit (0: train on labeled rows only)."
    ),
    replay: bool = typer.Option(
        True, help="Replay the test window through the service's decision path (the headline figures)."
    ),
    replay_warm_days: float = typer.Option(7, help="Days replayed before the test window to warm caps."),
) -> None:
    """Train, calibrate, explain and register a model from Feast's point-in-time features."""
    from functools import partial

    from features.store import StoreConfig, historical_features
    from scoring.rules import rules_score_frame
    from training.dataset import assemble_training_frame, presume_unlabeled_legit
    from training.run import train_model

    settings = _settings(root)
    keys = pd.read_parquet(_need(settings.features_dir / "keys.parquet", "run `promoguard features build`"))
    labels = pd.read_parquet(_need(settings.raw_dir / "labels.parquet", "labels.parquet is missing"))
    started = time.perf_counter()
    with console.status("fetching point-in-time features from Feast (promo_abuse_v1)"):
        historical = partial(historical_features, StoreConfig.from_settings(settings))
        if presume_legit_after > 0:
            labels = presume_unlabeled_legit(keys, labels, maturity_days=presume_legit_after)
        frame = assemble_training_frame(keys, labels, historical, _truth(settings))
    console.print(f"training frame: {len(frame):,} labeled attempts in {time.perf_counter() - started:.1f}s")
    with console.status("training") as status:
        result = train_model(
            frame,
            tracking_uri=settings.mlflow_tracking_uri,
            model_name=settings.model_name,
            feature_service=settings.feature_service,
            baseline=rules_score_frame,
            test_days=test_days,
            gap_days=gap_days,
            progress=lambda msg: status.update(msg),
        )

    # NaN marks a slice too small to measure: the tables say n/a rather than "nan".
    def shown(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.astype(object).where(frame.notna(), "n/a")

    truth_patterns = getattr(result, "truth_patterns", None)
    if truth_patterns is not None and not truth_patterns.empty:
        from training.evaluate import source_importance
        from training.run import FOLD_SUMMARY_COLUMNS

        print_table(
            "test window per seed pattern, against truth: recall at the model's verify / refuse thresholds "
            "(abusive: truly abusive attempts; labeled: share the store labeled abuse; n/a below 20 "
            "abusive attempts; folds: median over the rolling-origin folds)",
            shown(
                truth_patterns.rename(
                    columns={
                        "abusive_rows": "abusive",
                        "labeled_abuse": "labeled",
                        "recall_verify": "verify",
                        "recall_refuse": "refuse",
                        "mean_score": "score",
                        "fold_median_recall_verify": "folds verify",
                        "fold_median_recall_refuse": "folds refuse",
                    }
                )
            ),
        )
        print_table(
            "truly honest shoppers flagged (verify includes refuse)",
            shown(
                result.truth_honest.rename(
                    columns={
                        "honest_rows": "honest",
                        "flag_rate_verify": "verify",
                        "flag_rate_refuse": "refuse",
                    }
                )
            ),
        )
        seed = shown(result.seed_rules_comparison)
        # The honest flag rate is a fraction of a percent: shown as a percentage, not rounded to 0.000.
        rate = seed["slice"] == "legit_flag_rate"
        for col in seed.columns[2:]:
            seed.loc[rate, col] = [f"{v:.3%}" if isinstance(v, float) else v for v in seed.loc[rate, col]]
        print_table(
            "seed one-line rules vs models, each cut at the seed rules' honest flag rate (recall vs truth)",
            seed,
        )
        folds = result.folds[[c for c in FOLD_SUMMARY_COLUMNS if c in result.folds.columns]].copy()
        folds["test_start"] = folds["test_start"].astype(str).str[:10]
        folds["test_rows"] = folds["test_rows"].round().astype("Int64")
        short = {
            "label_pr_auc": "label PR-AUC",
            "truth_pr_auc": "truth PR-AUC",
            "truth_recall_verify_seed_patterns": "seed verify",
            "truth_recall_refuse_seed_patterns": "seed refuse",
            "truth_recall_verify_bot_spray": "bots verify",
            "truth_honest_flag_rate_verify": "honest verify",
            "truth_honest_flag_rate_refuse": "honest refuse",
        }
        print_table(
            "rolling-origin folds: recall of seed patterns / bots and honest flag rate, against truth "
            "(headline: the median row)",
            shown(folds.rename(columns=short)),
        )
        print_table("evasion: recall of seed-pattern abusers after each change", result.evasion)
        if not result.group_importance.empty:
            print_table(
                "where the model's mean |SHAP| comes from: identity (who the shopper is, persons and "
                "households included) vs code popularity (how everyone uses the code) vs context",
                source_importance(result.group_importance),
            )
    else:
        print_table("test window: model vs baselines at equal false-positive rate", result.comparison)
        print_table("test window per abuse pattern", result.patterns)
        print_table("false-positive traps (legit actors)", result.traps)
        print_table("evasion: recall when one attacker-controllable group changes", result.evasion)
    if replay and result.model_version is not None:
        _replay_headline(settings, result.model_version, result.split, replay_warm_days)
    console.print(
        f"run {result.run_id}; registered {settings.model_name} version {result.model_version}; "
        f"{time.perf_counter() - started:.1f}s in all"
    )


def _replay_progress(bar: Any) -> Any:
    tasks: dict[str, Any] = {}

    def progress(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(f"replaying {name}", total=total)
        bar.update(tasks[name], completed=done)

    return progress


def _replay_headline(settings: Settings, version: str, split: Any, warm_days: float) -> None:
    """Replay the new version (and the champion) on the test window and print the headline table."""
    from rich.progress import Progress

    from promoguard.backtest import replay_version, summary_frame
    from training.registry import champion_version

    champion = champion_version(settings.mlflow_tracking_uri, settings.model_name)
    with Progress(console=console, transient=True) as bar:
        report = replay_version(
            settings,
            version,
            champion=champion,
            test_start=split.test_start,
            test_end=split.test_end,
            warm_days=warm_days,
            progress=_replay_progress(bar),
        )
    who = f"version {version}" + (f" and champion {champion}" if len(report["runs"]) > 1 else "")
    print_table(
        "headline: the test window replayed through the service's decision path, caps and hard rules "
        f"included ({who})",
        summary_frame(report),
    )


@app.command()
def promote(
    version: str | None = typer.Option(None, help="Model version to promote (default: the newest)."),
    max_score_shift: float = typer.Option(
        0.25, help="Largest score-distribution PSI allowed vs the champion."
    ),
    honest_refusal_tolerance: float = typer.Option(
        0.001, help="Extra share of honest shoppers the candidate may refuse in the replay vs the champion."
    ),
    root: Path | None = typer.Option(None, help="Project root (default: current folder)."),
) -> None:
    """Move the champion alias to a candidate only if it beats the champion on the same test window.

    Beside PR-AUC and score shift, both models are replayed on the candidate's test window through the
    service's decision path: a candidate that refuses more honest shoppers than the champion is refused.
    """
    from rich.progress import Progress

    from promoguard.backtest import evaluation_window, gate_figures, replay_version, stored_gate_figures
    from training.registry import champion_version, latest_version
    from training.registry import promote as promote_version

    settings = _settings(root)
    candidate = version or latest_version(settings.mlflow_tracking_uri, settings.model_name)
    champion = champion_version(settings.mlflow_tracking_uri, settings.model_name)
    figures = None
    if champion is not None and champion != str(candidate):
        # Both models replayed on the same attempts, caps and hard rules included: from training when it
        # replayed against this champion, else now.
        figures = stored_gate_figures(settings, str(candidate), champion)
        if figures is None:
            start, end = evaluation_window(settings, str(candidate))
            with Progress(console=console, transient=True) as bar:
                report = replay_version(
                    settings, str(candidate), champion=champion, test_start=start, test_end=end,
                    progress=_replay_progress(bar),
                )
            figures = gate_figures(report)
    decision = promote_version(
        settings.mlflow_tracking_uri,
        settings.model_name,
        candidate,
        max_score_shift=max_score_shift,
        replay=figures,
        honest_refusal_tolerance=honest_refusal_tolerance,
    )
    verdict = "[green]promoted[/green]" if decision.promoted else "[yellow]not promoted[/yellow]"
    console.print(f"{settings.model_name} version {candidate}: {verdict}")
    for reason in decision.reasons:
        console.print(f"  - {reason}")


@app.command()
def backtest(
    days: float | None = typer.Option(None, help="Replay the last N days of the history."),
    start: str | None = typer.Option(None, help="Replay from this UTC time (ISO 8601) instead of --days."),
    end: str | None = typer.Option(None, help="Replay up to this UTC time (default: the history's end)."),
    model: str = typer.Option("champion", help="Model to replay: champion, a version number, or rules."),
    rules: Path | None = typer.Option(None, help="Rules table to replay (default: the configured one)."),
    compare: str | None = typer.Option(
        None, help="A second configuration on the same events: a model version, champion, rules or a YAML."
    ),
    warm_days: float | None = typer.Option(
        30, help="Days before the window replayed first to warm counters and caps (answers not reported)."
    ),
    root: Path | None = typer.Option(None, help="Project root (default: current folder)."),
) -> None:
    """Replay history through the service's decision path and write a per-campaign loss ledger."""
    from rich.progress import Progress

    from promoguard.backtest import choose_window, log_report, run_backtest, summary_frame, write_report

    settings = _settings(root)
    if rules is not None:
        settings = settings.model_copy(update={"rules_path": rules})
    events_path = _need(settings.raw_dir / "events.parquet", "run `promoguard simulate` first")
    ts = pd.to_datetime(pd.read_parquet(events_path, columns=["ts"])["ts"], utc=True)
    if days is None and start is None:
        days = 14
    try:
        window = choose_window(ts, days=days, start=start, end=end, warm_days=warm_days)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    configurations = [model] + ([compare] if compare else [])
    started = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        report = run_backtest(
            settings, window=window, configurations=configurations, progress=_replay_progress(bar)
        )
    paths = write_report(settings, report)
    run_id = log_report(settings, report, paths)
    print_table("backtest: decisions per promotion type", summary_frame(report))
    console.print(
        f"replayed {report['window']['attempts']:,} attempts "
        f"(+{report['window']['warm_attempts']:,} warm-up) "
        f"in {time.perf_counter() - started:.1f}s; wrote {paths['html'].relative_to(settings.root)} and "
        f"{paths['json'].name}; MLflow run {run_id}"
    )


@app.command()
def serve(
    port: int = typer.Option(3000, help="Port to listen on."),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to listen on: 127.0.0.1 (this machine only) or 0.0.0.0 (every one)."
    ),
    demo: bool = typer.Option(False, help="Send one example request and print a curl command once ready."),
    root: Path | None = typer.Option(None, help="Project root (default: current folder)."),
) -> None:
    """Start the BentoML scoring service (the same as `bentoml serve serving.service:PromoGuard`)."""
    from promoguard.demo import run_service

    raise typer.Exit(code=run_service(_settings(root), port=port, demo=demo, console=console, host=host))


@app.command()
def drift(
    days: float = typer.Option(7, help="The current window: the most recent days of the scoring log."),
    events: Path | None = typer.Option(None, help="Score this events parquet offline instead of the log."),
    root: Path | None = typer.Option(None, help="Project root (default: current folder)."),
) -> None:
    """Compare recent scoring with the champion's reference and write an HTML + JSON drift report.

    Exit status, for schedulers: 0 green, 1 amber (look this week), 2 red (look today), 3 nothing to
    compare (no champion, nothing scored in the window), 4 the run failed (bad input, unreadable files).
    A mistyped option is rejected by the parser before any run, with its usage message and status 2.
    """
    from monitoring.drift import ExitCode
    from promoguard.drift import drift_report

    try:
        settings = _settings(root)
    except typer.Exit:
        # A bad configuration is a failed run here, not the "red" that status 2 means to a scheduler.
        raise typer.Exit(code=ExitCode.FAILED) from None
    code = drift_report(settings, days=days, events=events, console=console)
    raise typer.Exit(code=code)


@app.command("shadow-report")
def shadow_report(
    days: float = typer.Option(7, help="The window: the most recent days of the shadow table and the log."),
    root: Path | None = typer.Option(None, help="Project root (default: current folder)."),
) -> None:
    """Compare the shadow challenger with the live decisions and measure the exploration holdout.

    Agreement and decision mix of live and challenger over the shadow table; once labels arrive
    (/feedback), recall and honest refusals per campaign, and the false-positive rate of the explored
    attempts. Prints the tables and writes data/reports/shadow-<timestamp>.json.
    """
    import json
    from datetime import UTC, datetime, timedelta

    from scoring.records import exploration_frame, shadow_frame
    from scoring.shadow import shadow_report as build_report

    settings = _settings(root)
    log = _need(settings.serving_dir / "scores.db", "the service writes it: run `promoguard serve` first")
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    built = build_report(shadow_frame(log, since), exploration_frame(log, since), since, now)
    report = {"days": days, **built}

    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    agree = report["agreement"]
    print_table(f"shadow: live vs challenger, last {days:g} days", pd.DataFrame([{
        "attempts": agree["attempts"], "agreement": pct(agree["agreement"]),
        "friction agreement": pct(agree["friction_agreement"]),
        "challenger stricter": agree["challenger_stricter"], "challenger looser": agree["challenger_looser"],
        "mean score change": "n/a" if agree["mean_score_change"] is None
        else f"{agree['mean_score_change']:+.1f}",
    }]))
    print_table("shadow: decision mix", pd.DataFrame([
        {"decision": r["decision"], "live": r["live"], "live share": pct(r["live_share"]),
         "challenger": r["challenger"], "challenger share": pct(r["challenger_share"])}
        for r in report["decision_mix"]
    ]))
    if report["labelled"]:
        print_table("shadow: per campaign (labelled attempts)", pd.DataFrame([
            {"campaign": r["campaign"], "attempts": r["attempts"], "abuse": r["abuse"], "legit": r["legit"],
             "live recall": pct(r["live_recall"]), "challenger recall": pct(r["challenger_recall"]),
             "live honest refused": r["live_honest_refused"],
             "challenger honest refused": r["challenger_honest_refused"]}
            for r in report["campaigns"]
        ]))
    explored = report["exploration"]
    if explored["explored"]:
        rows = [{"would_be_decision": "all", **explored}, *explored["by_would_be_decision"]]
        print_table("exploration: attempts let through", pd.DataFrame([
            {"would-be decision": r["would_be_decision"], "explored": r["explored"],
             "labelled": r["labelled"], "legit": r["legit"], "abuse": r["abuse"],
             "false-positive rate": pct(r["false_positive_rate"])}
            for r in rows
        ]))
    for note in report["notes"]:
        console.print(f"[yellow]note[/yellow]: {note}")
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    path = settings.reports_dir / f"shadow-{now:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    console.print(f"wrote {path}")


@app.command("maintenance")
def maintenance(
    vacuum: bool = typer.Option(False, help="Also return freed pages to the file system (rewrites files)."),
    root: Path | None = typer.Option(None, help="Project root (default: current folder)."),
) -> None:
    """Apply retention: prune the scoring log, the velocity store and the identity graph; print what went.

    Decisions older than PROMOGUARD_SCORES_RETENTION_DAYS (90) leave with their outcomes, labels and
    shadow rows; velocity counter members and request ids older than PROMOGUARD_VELOCITY_RETENTION_DAYS
    (31), expired cap holds and stale reservations are dropped; identity-graph entries not seen for
    PROMOGUARD_GRAPH_RETENTION_DAYS (400). Safe to run while the service runs.
    """
    from datetime import UTC, datetime

    from features.velocity import velocity_store
    from scoring.records import Records

    settings = _settings(root)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    log = settings.serving_dir / "scores.db"
    if log.exists():
        records = Records(log)
        try:
            pruned = records.prune(now, settings.scores_retention_days, vacuum=vacuum)
        finally:
            records.close()
        rows += [{"store": "scoring log", "removed": name, "rows": n} for name, n in vars(pruned).items()]
    velocity_path = settings.serving_dir / "velocity.db"
    if settings.velocity_backend == "redis" or velocity_path.exists():
        store: Any = velocity_store(
            settings.velocity_backend, velocity_path, settings.redis_url, redis_timeout_s=5.0,
            retention_s=settings.velocity_retention_days * 86_400,
        )
        try:
            counts = store.prune(now.timestamp(), vacuum=vacuum)
        finally:
            store.close()
        rows += [{"store": f"velocity ({settings.velocity_backend})", "removed": name, "rows": n}
                 for name, n in vars(counts).items()]
    graph_path = settings.serving_dir / "graph.db"
    if settings.velocity_backend != "redis" and graph_path.exists():
        # Redis graph entries expire by themselves; the SQLite graph is pruned here.
        from features.graph import GraphConfig, SqliteGraph

        graph = SqliteGraph(graph_path, GraphConfig(retention_days=settings.graph_retention_days),
                            busy_timeout_ms=5000)
        try:
            gone = graph.prune(now.timestamp())
        finally:
            graph.close()
        rows.append({"store": "identity graph (sqlite)", "removed": "entries", "rows": gone})
    if not rows:
        console.print(f"nothing to prune: no scoring log or velocity store under {settings.serving_dir}")
        return
    print_table(f"maintenance as of {now:%Y-%m-%d %H:%M} UTC", pd.DataFrame(rows))


def main() -> None:
    """Entry point for ``python -m promoguard``."""
    app()
