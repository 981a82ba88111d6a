"""The notebooks run top to bottom against the world, and are committed thin and without outputs.

Each notebook is executed with nbclient on the venv's ``python3`` kernel, in the world's root, with its
``parameters`` cell overridden by an injected cell (the papermill convention) so that CI runs them
small. The retraining notebook must leave a new MLflow run and registered version behind and print its
promotion decision with reasons; the champion alias is put back afterwards so that the rest of the
session keeps scoring with the world's champion.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient
from nbformat import NotebookNode

from promoguard.settings import Settings
from training.registry import CHAMPION, latest_version, normalize_tracking_uri

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ("01-explore-history.ipynb", "02-retrain.ipynb", "03-drift-review.ipynb")


def _read(name: str) -> NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _parameters_index(nb: NotebookNode) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


def _execute(name: str, root: Path, parameters: dict[str, Any]) -> NotebookNode:
    """Run a notebook in ``root`` with ``parameters`` injected right after its parameters cell."""
    nb = _read(name)
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(_parameters_index(nb) + 1, injected)
    # The venv's python3 kernelspec runs the interpreter running this test, so the kernel imports the
    # same packages; the world fixture has set PROMOGUARD_ROOT, which the kernel inherits.
    client = NotebookClient(
        nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(root)}}
    )
    client.execute()
    return nb


def _text_output(nb: NotebookNode) -> str:
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def _mlflow(settings: Settings) -> MlflowClient:
    uri = normalize_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _has_image(nb: NotebookNode) -> bool:
    return any("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_thin_stripped_and_parameterised(name: str) -> None:
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert _parameters_index(nb) == nb.cells.index(code[0]), "the parameters cell is the first code cell"
    params = ast.parse(code[0].source)
    assigned = {
        t.id
        for node in params.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    assert {"ROOT", "N_EVENTS", "SEED"} <= assigned
    assert 'os.environ.get("PROMOGUARD_ROOT", ".")' in code[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"outputs left in {name}"
        # IPython turns magics such as %matplotlib into plain Python before it runs a cell.
        tree = ast.parse(TransformerManager().transform_cell(cell.source))
        defined = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.Lambda)]
        assert not defined, f"{name}: notebooks call the packages, they define no functions or classes"
    steps = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    explained = [i for i in steps if i > 0 and nb.cells[i - 1].cell_type == "markdown"]
    # Every step but consecutive code cells of one step has its "what and why" right before it.
    assert len(explained) >= len(steps) - 2, f"{name}: steps without a markdown explanation"


@pytest.fixture
def champion_restored(world: Settings) -> Iterator[str]:
    """The champion version before the test; the alias is moved back to it afterwards."""
    client = _mlflow(world)
    before = str(client.get_model_version_by_alias(world.model_name, CHAMPION).version)
    yield before
    client.set_registered_model_alias(world.model_name, CHAMPION, before)


@pytest.mark.xdist_group("world")
@pytest.mark.slow
def test_explore_history_notebook_runs_and_shows_tables_and_plots(world: Settings) -> None:
    nb = _execute(NAMES[0], world.root, {"ROOT": str(world.root), "N_EVENTS": 2_000, "SEED": 3})
    text = _text_output(nb)
    assert "welcome_cycling" in text, "the per-pattern table names the abuse patterns"
    assert "collapse_rate" in text, "the identity collapse table is shown"
    assert _has_image(nb)


@pytest.mark.xdist_group("world")
@pytest.mark.slow
def test_drift_review_notebook_writes_a_report_and_drills_into_the_top_feature(world: Settings) -> None:
    before = set(world.reports_dir.glob("drift-*.json")) if world.reports_dir.exists() else set()
    params = {
        "ROOT": str(world.root),
        "N_EVENTS": 8_000,
        "DAYS": 30,
        "SEED": 5,
        "DRIFT_KIND": "new_bot_farm",
        "DRIFT_START_DAY": 20,
    }
    nb = _execute(NAMES[2], world.root, params)
    written = set(world.reports_dir.glob("drift-*.json")) - before
    assert len(written) == 1, "the notebook writes exactly one new report"
    report = json.loads(written.pop().read_text(encoding="utf-8"))
    text = _text_output(nb)
    assert f"status {report['status']} (exit {report['exit_code']})" in text
    assert report["summary"][0] in text
    top = max(report["features"], key=lambda f: f["psi"])["name"]
    assert top in text, "the features table and the drill-down show the most drifted feature"
    assert _has_image(nb)


@pytest.mark.xdist_group("world")
@pytest.mark.slow
def test_retrain_notebook_registers_a_new_version_and_prints_the_promotion_decision(
    world: Settings, champion_restored: str
) -> None:
    versions_before = int(latest_version(world.mlflow_tracking_uri, world.model_name))
    # The world was trained with --test-days 10 --gap-days 7 (its history is short); promotion is asked for.
    params = {"ROOT": str(world.root), "N_EVENTS": None, "SEED": 11, "TEST_DAYS": 10, "GAP_DAYS": 7}
    params["PROMOTE"] = True
    nb = _execute(NAMES[1], world.root, params)
    new_version = int(latest_version(world.mlflow_tracking_uri, world.model_name))
    assert new_version == versions_before + 1, "the notebook registers exactly one new model version"
    run_id = _mlflow(world).get_model_version(world.model_name, str(new_version)).run_id
    text = _text_output(nb)
    assert f"MLflow run {run_id}; registered {world.model_name} version {new_version}" in text
    decision_lines = [
        line for line in text.splitlines() if line.startswith(f"{world.model_name} version {new_version}: ")
    ]
    assert decision_lines and decision_lines[0].endswith(("promoted", "not promoted")), text[-2000:]
    assert any(line.startswith("  - ") for line in text.splitlines()), "the decision comes with its reasons"
    assert f"challenger version {new_version} vs the champion: " in text, "the checks first, as a dry run"
    assert "figure(s) logged with run" in text
    assert _has_image(nb), "the SHAP importance plot is shown"


def _promote_calls(source: str) -> list[ast.Call]:
    tree = ast.parse(TransformerManager().transform_cell(source))
    return [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "promote"
    ]


def _is_dry_run(call: ast.Call) -> bool:
    return any(
        k.arg == "dry_run" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def test_retrain_notebook_promotes_only_in_its_last_cell_and_only_when_asked() -> None:
    nb = _read(NAMES[1])
    code = [c for c in nb.cells if c.cell_type == "code"]
    namespace: dict[str, Any] = {}
    exec(code[0].source, namespace)
    assert namespace["PROMOTE"] is False, "the committed notebook never promotes by default"
    for cell in code[:-1]:
        assert all(_is_dry_run(call) for call in _promote_calls(cell.source)), "only dry runs before the end"
    last = ast.parse(code[-1].source)
    assert len(last.body) == 1 and isinstance(last.body[0], ast.If)
    guard = last.body[0]
    assert isinstance(guard.test, ast.Name) and guard.test.id == "PROMOTE"
    promoting = [c for n in guard.body for c in _promote_calls(ast.unparse(n)) if not _is_dry_run(c)]
    assert promoting, "promotes when asked"
    assert not _promote_calls("\n".join(ast.unparse(n) for n in guard.orelse))
    heading = nb.cells[nb.cells.index(code[-1]) - 1]
    assert heading.cell_type == "markdown" and "PROMOTE = True" in heading.source


def test_retrain_notebook_trains_with_the_command_lines_split() -> None:
    import inspect

    from promoguard.cli import train

    defaults = {name: p.default.default for name, p in inspect.signature(train).parameters.items()}
    namespace: dict[str, Any] = {}
    exec(next(c for c in _read(NAMES[1]).cells if c.cell_type == "code").source, namespace)
    assert namespace["TEST_DAYS"] == defaults["test_days"]
    assert namespace["GAP_DAYS"] == defaults["gap_days"]
    assert namespace["PRESUME_LEGIT_AFTER"] == defaults["presume_legit_after"]
    assert namespace["N_EVENTS"] is defaults["max_rows"] is None, "like the command line: every attempt"
