"""The ``promoguard`` command line: a thin Typer shell over the pipeline stages."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from config.quiet import quiet_mlflow, quiet_third_party_warnings
from promoguard.errors import ExitCode, OperatorGroup, fail, read_parquet
from promoguard.settings import InvalidSettings, Settings

if TYPE_CHECKING:
    # Imported by the commands that need it: `promoguard maintenance` runs beside a busy service,
    # and pandas alone is over half a second of a command's start.
    import pandas as pd

# OperatorGroup: a failure an operator can fix ends any command with one line and its own exit code.
app = typer.Typer(
    cls=OperatorGroup, add_completion=False, no_args_is_help=True, help="Promotional-abuse risk scoring."
)
console = Console()


@contextlib.contextmanager
def _status_dropping_prints(message: str) -> Iterator[None]:
    """A status line while the block runs; what the block prints to stdout is dropped.

    For a library that prints its own chatter: Feast's materialize prints a banner and every view's
    name, in colour codes even into a log file, which the status line already says while it runs.
    """
    # A console bound to stdout now keeps drawing the status while the block's stdout is redirected.
    shown = Console(file=sys.stdout)
    with shown.status(message), contextlib.redirect_stdout(io.StringIO()):
        yield


@app.callback()
def _root() -> None:
    """promoguard: score promo-code attempts for abuse (simulate, features, train, promote, serve, drift)."""
    quiet_third_party_warnings()
    quiet_mlflow()


def _settings(root: Path | None) -> Settings:
    """This command's settings; a bad environment ends it with the message naming the variable."""
    try:
        return Settings.from_env(root=root)
    except InvalidSettings as exc:
        fail(f"invalid configuration: {exc}", ExitCode.CONFIG)


def print_table(title: str, frame: pd.DataFrame | list[dict[str, Any]]) -> None:
    """Render a small DataFrame, or rows as dicts, as a rich table (the summary every long step ends with).

    Rows as dicts let a command that needs no pandas print without importing it.
    """
    if isinstance(frame, list):
        columns = list(frame[0]) if frame else []
        rows: list[Any] = [tuple(row[c] for c in columns) for row in frame]
        numeric = [all(isinstance(row[c], int | float) and not isinstance(row[c], bool) for row in frame)
                   for c in columns]
    else:
        columns, rows = list(frame.columns), list(frame.itertuples(index=False))
        numeric = [frame[c].dtype.kind in "if" for c in columns]
    table = Table(title=title)
    for col, right in zip(columns, numeric, strict=True):
        table.add_column(str(col), justify="right" if right else "left")
    for row in rows:
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
        fail(f"missing {path}: {hint}", ExitCode.MISSING_INPUT)
    return path


@features_app.command("build")
def features_build(
    engine: str | None = typer.Option(
        None, help="numpy (default), duckdb (the SQL, in process) or spark; overrides PROMOGUARD_ENGINE."
    ),
    root: Path | None = typer.Option(None, help="Project root holding data/ (default: current folder)."),
) -> None:
    """Resolve identities and compute point-in-time aggregates into data/features/."""
    import pandas as pd

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
        events = validate_events(read_parquet(events_path))
        labels = validate_labels(read_parquet(labels_path))
    with console.status(f"resolving identity for {len(events):,} events"):
        keys = add_context(resolve_frame(events, _resolver(settings)), _promotions(settings.raw_dir))
        del events
        settings.features_dir.mkdir(parents=True, exist_ok=True)
        keys.to_parquet(settings.features_dir / "keys.parquet", index=False)
    resolved = time.perf_counter()
    with console.status(f"computing point-in-time aggregates with {chosen}"):
        frames = build_features(
            keys,
            labels,
            engine=chosen,  # type: ignore[arg-type]
            spark_master=settings.spark_master,
            spark_driver_memory=settings.spark_driver_memory,
        )
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
    keys = read_parquet(
        _need(settings.features_dir / "keys.parquet", "run `promoguard features build` first"), columns=["ts"]
    )
    # Without a registry Feast would materialize no view at all and report success.
    _need(settings.feast_dir / "registry.db", "the feature registry: run `promoguard features apply` first")
    end = default_as_of(keys).to_pydatetime()
    started = time.perf_counter()
    with _status_dropping_prints(
        f"materializing up to {end.isoformat()} into the {settings.online_store} online store"
    ):
        materialize(StoreConfig.from_settings(settings), end=end)
    console.print(f"materialized up to {end.isoformat()} in {time.perf_counter() - started:.1f}s")


def _truth(settings: Settings) -> pd.DataFrame | None:
    """Simulator ground truth for per-pattern evaluation (absent for a store's own export)."""
    import pandas as pd

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
    max_rows: int | None = typer.Option(
        None, min=1,
        help="Train on a uniform sample of this many labeled attempts, drawn before the feature retrieval "
        "(default: all): bounds the training frame's memory on a history too large for it.",
    ),
) -> None:
    """Train, calibrate, explain and register a model from Feast's point-in-time features."""
    from functools import partial

    from features.store import StoreConfig, historical_features
    from scoring.rules import rules_score_frame
    from training.dataset import assemble_training_frame, presume_unlabeled_legit, sampled_from
    from training.run import train_model

    settings = _settings(root)
    keys = read_parquet(_need(settings.features_dir / "keys.parquet", "run `promoguard features build`"))
    labels = read_parquet(_need(settings.raw_dir / "labels.parquet", "labels.parquet is missing"))
    started = time.perf_counter()
    with console.status(
        f"fetching point-in-time features from Feast (promo_abuse_v1, {settings.offline_store} offline store)"
    ):
        historical = partial(historical_features, StoreConfig.from_settings(settings))
        if presume_legit_after > 0:
            labels = presume_unlabeled_legit(keys, labels, maturity_days=presume_legit_after)
        frame = assemble_training_frame(keys, labels, historical, _truth(settings), max_rows=max_rows)
    drawn_from = sampled_from(frame)
    sampled = "" if drawn_from is None else f" (a uniform sample of {drawn_from:,})"
    console.print(
        f"training frame: {len(frame):,} labeled attempts{sampled} in {time.perf_counter() - started:.1f}s"
    )
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
    console.print("training stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))

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
    started = time.perf_counter()
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
        f"included ({who}; {time.perf_counter() - started:.1f}s)",
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
    honest_verification_tolerance: float = typer.Option(
        0.005, help="Extra share of honest shoppers the candidate may send to verification in the replay."
    ),
    root: Path | None = typer.Option(None, help="Project root (default: current folder)."),
) -> None:
    """Move the champion alias to a candidate only if it beats the champion on the same test window.

    Beside PR-AUC and score shift, both models are replayed on the candidate's test window through the
    service's decision path: a candidate that refuses, or sends to verification, more honest shoppers
    than the champion is refused.
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
        honest_verification_tolerance=honest_verification_tolerance,
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
    import pandas as pd
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

    import pandas as pd

    from scoring.records import exploration_frame, shadow_frame
    from scoring.shadow import shadow_report as build_report

    settings = _settings(root)
    # With PROMOGUARD_STATE_URL the log is the replicas' shared database, else this root's file.
    log = settings.state_url or _need(
        settings.serving_dir / "scores.db", "the service writes it: run `promoguard serve` first"
    )
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


@app.command("export-decisions")
def export_decisions(
    days: float | None = typer.Option(7, help="The most recent days (ignored when --since is given)."),
    since: str | None = typer.Option(None, help="Start of the window (ISO-8601, UTC unless it says)."),
    until: str | None = typer.Option(None, help="End of the window, exclusive (default: now)."),
    campaign: str | None = typer.Option(None, help="One promotion code (any letter case)."),
    out: Path | None = typer.Option(None, help="CSV (or .parquet) to write (default: data/reports/)."),
    root: Path | None = typer.Option(None, help="Project root (default: current folder)."),
) -> None:
    """Export a window's decisions for finance and incident reports: one row per attempt, no identities.

    Each row: what checkout got and, when exploration or a monitor-only campaign let it through, what the
    policy decided; the deciding reason code, score, band, discount at stake, versions, and the latest
    outcome and label. Prints the totals per campaign and decision.
    """
    from datetime import UTC, datetime, timedelta

    from scoring.records import decisions_frame

    settings = _settings(root)
    log = settings.state_url or _need(
        settings.serving_dir / "scores.db", "the service writes it: run `promoguard serve` first"
    )

    def moment(text: str, option: str) -> datetime:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            fail(f"{option}: expected an ISO-8601 time such as 2026-11-28T00:00:00Z, got {text!r}",
                 ExitCode.CONFIG)
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    end = moment(until, "--until") if until else datetime.now(UTC)
    start = moment(since, "--since") if since else end - timedelta(days=days or 7)
    frame = decisions_frame(log, start, end, campaign)
    target = out or settings.reports_dir / f"decisions-{end:%Y%m%dT%H%M%SZ}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".parquet":
        frame.to_parquet(target, index=False)
    else:
        frame.to_csv(target, index=False)
    if len(frame):
        totals = (frame.assign(discount_value=frame["discount_value"].fillna(0.0))
                  .groupby(["campaign", "decision"], as_index=False)
                  .agg(attempts=("request_id", "size"), discount_at_stake=("discount_value", "sum")))
        print_table(f"decisions {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC", totals)
    console.print(f"wrote {len(frame):,} decisions to {target}")


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
    from scoring.state import open_records

    settings = _settings(root)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    # Seconds per store, printed so that an operator sees which retention is slow.
    took: dict[str, float] = {}
    log = settings.serving_dir / "scores.db"
    if settings.state_url or log.exists():
        # The replicas' shared database when PROMOGUARD_STATE_URL is set, else this root's file.
        started = time.perf_counter()
        records = open_records(settings.state_url, settings.serving_dir, checkpoint_interval_s=None)
        try:
            pruned = records.prune(now, settings.scores_retention_days, vacuum=vacuum)
        finally:
            records.close()
        took["scoring log"] = time.perf_counter() - started
        rows += [{"store": "scoring log", "removed": name, "rows": n} for name, n in vars(pruned).items()]
    velocity_path = settings.serving_dir / "velocity.db"
    if settings.velocity_backend == "redis" or velocity_path.exists():
        started = time.perf_counter()
        store: Any = velocity_store(
            settings.velocity_backend, velocity_path, settings.redis_url, redis_timeout_s=5.0,
            retention_s=settings.velocity_retention_days * 86_400,
        )
        try:
            counts = store.prune(now.timestamp(), vacuum=vacuum)
        finally:
            store.close()
        took[f"velocity ({settings.velocity_backend})"] = time.perf_counter() - started
        rows += [{"store": f"velocity ({settings.velocity_backend})", "removed": name, "rows": n}
                 for name, n in vars(counts).items()]
    graph_path = settings.serving_dir / "graph.db"
    if settings.velocity_backend != "redis" and graph_path.exists():
        # Redis graph entries expire by themselves; the SQLite graph is pruned here.
        from features.graph import GraphConfig, SqliteGraph

        started = time.perf_counter()
        graph = SqliteGraph(graph_path, GraphConfig(retention_days=settings.graph_retention_days),
                            busy_timeout_ms=5000)
        try:
            gone = graph.prune(now.timestamp())
        finally:
            graph.close()
        took["identity graph (sqlite)"] = time.perf_counter() - started
        rows.append({"store": "identity graph (sqlite)", "removed": "entries", "rows": gone})
    if not rows:
        console.print(f"nothing to prune: no scoring log or velocity store under {settings.serving_dir}")
        return
    print_table(f"maintenance as of {now:%Y-%m-%d %H:%M} UTC", rows)
    console.print("took " + ", ".join(f"{store} {seconds:.2f} s" for store, seconds in took.items()))


# --- campaign controls and allow/deny lists -----------------------------------------------------------

campaign_app = typer.Typer(
    no_args_is_help=True,
    help="Pause, monitor, force verification or set thresholds on one promotion code; a running service "
         "picks a change up within PROMOGUARD_CONTROLS_REFRESH_S seconds.",
)
app.add_typer(campaign_app, name="campaign")
lists_app = typer.Typer(no_args_is_help=True, help="Allow and deny lists of identities (keyed hashes only).")
app.add_typer(lists_app, name="lists")

_BY = typer.Option(None, "--by", help="Who makes the change, for the audit trail (default: the OS user).")
_ROOT = typer.Option(None, "--root", help="Project root (default: current folder).")


def _actor(by: str | None) -> str:
    import getpass

    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def _controls(root: Path | None) -> Any:
    from scoring.controls_store import ControlsStore

    settings = _settings(root)
    return ControlsStore(settings.state_url, settings.serving_dir)


def _campaign_change(code: str, by: str | None, root: Path | None, action: str, **changes: Any) -> None:
    from scoring.controls import InvalidControl

    try:
        control = _controls(root).update_campaign(code, _actor(by), action, **changes)
    except InvalidControl as exc:
        fail(f"invalid control: {exc}", ExitCode.CONFIG)
    _print_campaigns([control])


def _print_campaigns(controls: list[Any]) -> None:
    import pandas as pd

    rows = [{
        "code": c.code, "mode": c.mode, "force verify": "yes" if c.force_verify else "no",
        "verify at": "-" if c.verify_threshold is None else str(c.verify_threshold),
        "refuse at": "-" if c.refuse_threshold is None else str(c.refuse_threshold),
        "reason": c.reason or "-", "by": c.updated_by,
        "when (UTC)": "-" if c.updated_at is None else f"{c.updated_at:%Y-%m-%d %H:%M:%S}",
    } for c in controls]
    print_table("campaign controls", pd.DataFrame(rows, columns=[
        "code", "mode", "force verify", "verify at", "refuse at", "reason", "by", "when (UTC)"]))


@campaign_app.command("pause")
def campaign_pause(
    code: str = typer.Argument(..., help="The promotion code (any letter case)."),
    reason: str | None = typer.Option(None, help="Why; checkout's signal says it after 'campaign paused'."),
    by: str | None = _BY,
    root: Path | None = _ROOT,
) -> None:
    """Refuse every attempt at the code with the reason "campaign paused" until it is resumed."""
    _campaign_change(code, by, root, "pause", mode="paused", reason=reason)


@campaign_app.command("resume")
def campaign_resume(code: str = typer.Argument(...), by: str | None = _BY, root: Path | None = _ROOT) -> None:
    """Score the code normally again after a pause or a monitor-only period (other settings stay)."""
    _campaign_change(code, by, root, "resume", mode="active", reason=None)


@campaign_app.command("monitor")
def campaign_monitor(
    code: str = typer.Argument(...),
    reason: str | None = typer.Option(None, help="Why, for the audit trail."),
    by: str | None = _BY,
    root: Path | None = _ROOT,
) -> None:
    """Monitor-only: every attempt is scored and its decision logged, and the answer is allow."""
    _campaign_change(code, by, root, "monitor", mode="monitor", reason=reason)


@campaign_app.command("verify")
def campaign_verify(
    code: str = typer.Argument(...),
    off: bool = typer.Option(False, "--off", help="Stop forcing verification."),
    reason: str | None = typer.Option(None, help="Why; checkout's signal says it."),
    by: str | None = _BY,
    root: Path | None = _ROOT,
) -> None:
    """Force verification: an attempt the policy would allow or watch is asked to verify instead."""
    _campaign_change(code, by, root, "verify off" if off else "verify", force_verify=not off,
                     **({} if off else {"reason": reason}))


@campaign_app.command("thresholds")
def campaign_thresholds(
    code: str = typer.Argument(...),
    verify: int | None = typer.Option(None, help="Score from which the code's attempts are verified."),
    refuse: int | None = typer.Option(
        None, help="Score from which they are refused (elsewhere a score alone only asks to verify)."
    ),
    clear: bool = typer.Option(False, "--clear", help="Back to the promotion type's thresholds."),
    by: str | None = _BY,
    root: Path | None = _ROOT,
) -> None:
    """Raise or lower the code's own verify and refuse thresholds (replacing its promotion type's)."""
    if clear == (verify is not None or refuse is not None):
        fail("invalid control: give --verify and/or --refuse, or --clear", ExitCode.CONFIG)
    _campaign_change(code, by, root, "thresholds", verify_threshold=verify, refuse_threshold=refuse)


@campaign_app.command("show")
def campaign_show(
    code: str | None = typer.Argument(None, help="One code, with its audit trail (default: every code)."),
    changes: int = typer.Option(20, help="Audit rows to print."),
    root: Path | None = _ROOT,
) -> None:
    """Print the campaign controls in force and the latest changes, who made them and when."""
    import pandas as pd

    store = _controls(root)
    controls = [store.campaign(code)] if code else store.campaigns()
    controls = [c for c in controls if c is not None]
    if not controls:
        console.print(f"no control set on {code}" if code else "no campaign controls set")
    else:
        _print_campaigns(controls)
    audit = [a for a in store.audit(limit=changes * 5) if a.target.startswith("campaign:")]
    if code:
        audit = [a for a in audit if a.target.casefold() == f"campaign:{code.strip()}".casefold()]
    if audit:
        print_table("changes, newest first", pd.DataFrame(
            [{"when (UTC)": a.ts[:19].replace("T", " "), "by": a.actor, "action": a.action,
              "campaign": a.target.removeprefix("campaign:"), "reason": a.detail.get("reason") or "-"}
             for a in audit[:changes]]))


def _list_key(store_root: Path | None, kind: str, value: str | None, key: str | None) -> str:
    from scoring.controls import InvalidControl, list_key

    if (value is None) == (key is None):
        fail("invalid entry: give the raw VALUE or --key, exactly one of them", ExitCode.CONFIG)
    if key is not None:
        return key
    assert value is not None
    try:
        return list_key(_resolver(_settings(store_root)), kind, value)
    except InvalidControl as exc:
        fail(f"invalid entry: {exc}", ExitCode.CONFIG)


@lists_app.command("add")
def lists_add(
    list_name: str = typer.Argument(..., metavar="LIST", help="allow or deny."),
    kind: str = typer.Argument(..., help="account, email, phone, device, payment, household, ip, network, "
                                         "local_network or person."),
    value: str | None = typer.Argument(None, help="The raw identifier (hashed, never stored)."),
    key: str | None = typer.Option(None, help="The keyed hash instead (as a decision record shows it)."),
    reason: str = typer.Option(..., help="Why: a deny entry's refusal says it."),
    expires_in_days: float | None = typer.Option(None, help="Drop the entry after this many days."),
    by: str | None = _BY,
    root: Path | None = _ROOT,
) -> None:
    """Add (or renew) an allow or deny entry; a running service applies it within seconds."""
    from datetime import timedelta

    from scoring.controls import InvalidControl, ListEntry, utc_now

    hashed = _list_key(root, kind, value, key)
    expires = None
    if expires_in_days is not None:
        if expires_in_days <= 0:
            fail("invalid entry: --expires-in-days must be more than 0", ExitCode.CONFIG)
        expires = utc_now() + timedelta(days=expires_in_days)
    try:
        entry = ListEntry(list=list_name, kind=kind, key=hashed, reason=reason, expires_at=expires)  # type: ignore[arg-type]
    except InvalidControl as exc:
        fail(f"invalid entry: {exc}", ExitCode.CONFIG)
    stored = _controls(root).add_entry(entry, _actor(by))
    console.print(f"added to the {stored.list} list: {stored.kind} {stored.key}"
                  + ("" if stored.expires_at is None else f" until {stored.expires_at:%Y-%m-%d %H:%M} UTC"))


@lists_app.command("remove")
def lists_remove(
    list_name: str = typer.Argument(..., metavar="LIST", help="allow or deny."),
    kind: str = typer.Argument(...),
    value: str | None = typer.Argument(None, help="The raw identifier (hashed to find the entry)."),
    key: str | None = typer.Option(None, help="The keyed hash instead."),
    by: str | None = _BY,
    root: Path | None = _ROOT,
) -> None:
    """Remove an entry; exits 1 when there was none."""
    hashed = _list_key(root, kind, value, key)
    if not _controls(root).remove_entry(list_name, kind, hashed, _actor(by)):
        console.print(f"no {kind} {hashed} on the {list_name} list")
        raise typer.Exit(code=1)
    console.print(f"removed from the {list_name} list: {kind} {hashed}")


@lists_app.command("show")
def lists_show(
    list_name: str | None = typer.Option(None, "--list", help="allow or deny (default: both)."),
    expired: bool = typer.Option(False, help="Also show expired entries."),
    root: Path | None = _ROOT,
) -> None:
    """Print the entries: list, kind, keyed hash, reason, who added it, when, until when."""
    import pandas as pd

    from scoring.controls import utc_now

    entries = _controls(root).entries(list_name, now=None if expired else utc_now())
    if not entries:
        console.print("no list entries")
        return
    print_table("allow and deny lists", pd.DataFrame([{
        "list": e.list, "kind": e.kind, "key": e.key, "reason": e.reason, "by": e.added_by,
        "added (UTC)": "-" if e.added_at is None else f"{e.added_at:%Y-%m-%d %H:%M}",
        "expires (UTC)": "never" if e.expires_at is None else f"{e.expires_at:%Y-%m-%d %H:%M}",
    } for e in entries]))


def main() -> None:
    """Entry point for ``python -m promoguard``."""
    app()
