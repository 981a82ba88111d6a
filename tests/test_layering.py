"""The import direction of the house: each room imports only the rooms below it.

promoguard (the shell) -> training, serving, monitoring, replay -> scoring -> features -> sqlitekit. Serving
never imports training: what crosses from training to serving travels inside the model artifact.
Function-level imports count as much as module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Which project packages each package may import (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "sqlitekit": frozenset(),
    "config": frozenset({"features"}),
    "features": frozenset({"sqlitekit"}),
    "simulation": frozenset({"features"}),
    "scoring": frozenset({"features", "sqlitekit"}),
    "training": frozenset({"scoring", "features"}),
    "serving": frozenset({"config", "scoring", "features", "sqlitekit"}),
    "monitoring": frozenset({"scoring", "features"}),
    "replay": frozenset({"scoring", "features"}),
    "promoguard": frozenset(
        {
            "config", "training", "serving", "monitoring", "replay", "scoring", "simulation", "features",
            "sqlitekit",
        }
    ),
}
PACKAGES = frozenset(ALLOWED)


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & PACKAGES


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_rooms_below_it(package: str) -> None:
    sources = _sources(package)
    assert sources, f"package {package} has no sources"
    wrong = {
        f"{path.relative_to(ROOT)} imports {other}"
        for path in sources
        for other in _imported_packages(path) - {package} - ALLOWED[package]
    }
    assert not wrong, sorted(wrong)


def test_every_top_level_package_has_a_place_in_the_layering() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= PACKAGES, sorted(packages - PACKAGES)


def test_a_violation_is_found() -> None:
    # The checker itself must see function-level imports, or the test above proves nothing.
    probe = ast.parse("def f():\n    from training.run import train_model\n")
    names = {n.module for n in ast.walk(probe) if isinstance(n, ast.ImportFrom)}
    assert names == {"training.run"}
    assert "training" in _imported_packages(ROOT / "promoguard" / "cli.py")
