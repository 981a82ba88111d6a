"""The service's local model cache: the registry's ``@champion`` downloaded once per worker at start.

:func:`fetch_champion` is the only place the service talks to MLflow. It runs at service start, never
on the request path, and falls back to the newest cached version when the registry cannot be reached.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from scoring.artifact import MANIFEST_FILE, ArtifactError

logger = logging.getLogger(__name__)


def _newest_cached(cache_dir: Path) -> Path | None:
    # Dot folders are downloads in progress.
    candidates = [
        p for p in cache_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    ]
    if not candidates:
        return None

    def order(p: Path) -> tuple[int, float]:
        return (int(p.name) if p.name.isdigit() else -1, p.stat().st_mtime)

    return max(candidates, key=order)


def _install(found: Path, target: Path) -> None:
    """Rename a complete download to ``target`` unless another process installed it first."""
    try:
        os.rename(found, target)
    except OSError:
        if (target / MANIFEST_FILE).is_file():
            return
        # A folder without a manifest is what an interrupted older install left behind.
        shutil.rmtree(target, ignore_errors=True)
        os.rename(found, target)


def _download_version(tracking_uri: str, model_name: str, ref: str, cache: Path) -> Path:
    """Download a registered version (a number) or an alias's version into ``cache/<version>/``.

    Raises whatever the registry raises; ArtifactError when the download holds no manifest.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if ref.isdigit():
        version = client.get_model_version(model_name, ref)
    else:
        version = client.get_model_version_by_alias(model_name, ref)
    target = cache / str(version.version)
    if (target / MANIFEST_FILE).is_file():
        return target
    # Every worker of a service fetches at start, at the same moment: each downloads into its own
    # staging folder and installs it with one rename, so a worker never sees (or deletes) another's
    # half-written copy. The first rename wins; the others drop their copy.
    staging = Path(tempfile.mkdtemp(prefix=f".{version.version}.partial-", dir=cache))
    try:
        mlflow.set_tracking_uri(tracking_uri)
        source = version.source or f"models:/{model_name}/{version.version}"
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging)))
        # The artifact files may sit one level down depending on how training logged them.
        found = next((p.parent for p in downloaded.rglob(MANIFEST_FILE)), None)
        if found is None:
            raise ArtifactError(f"model {model_name} version {version.version}: no {MANIFEST_FILE}")
        _install(found, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _prepare(cache_dir: str | Path) -> Path:
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    # MLflow's default HTTP retries back off for minutes; a service start must fall back in seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    return cache


def fetch_version(tracking_uri: str, model_name: str, ref: str, cache_dir: str | Path) -> Path:
    """Download a registered version (a number) or the version an alias names into ``cache_dir/<version>/``.

    A version already cached is used as is (a registered version never changes). Unlike
    :func:`fetch_champion` there is no fallback to another cached version: ArtifactError instead.
    """
    cache = Path(cache_dir)
    if ref.isdigit() and (cache / ref / MANIFEST_FILE).is_file():
        return cache / ref
    cache = _prepare(cache)
    try:
        return _download_version(tracking_uri, model_name, ref, cache)
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(
            f"model registry at {tracking_uri} gave no {model_name} {ref} ({type(exc).__name__})"
        ) from None


def fetch_champion(
    tracking_uri: str, model_name: str, cache_dir: str | Path, alias: str = "champion"
) -> Path:
    """Download the ``@champion`` artifacts into ``cache_dir/<version>/`` and return that directory.

    When the registry cannot be reached (or has no champion) the newest cached version is returned
    with a warning; ArtifactError when there is nothing cached either.
    """
    cache = _prepare(cache_dir)
    try:
        return _download_version(tracking_uri, model_name, alias, cache)
    except ArtifactError:
        raise
    except Exception as exc:
        cached = _newest_cached(cache)
        if cached is None:
            raise ArtifactError(
                f"model registry at {tracking_uri} gave no {model_name}@{alias} ({type(exc).__name__}) "
                f"and {cache} holds no cached version"
            ) from None
        logger.warning(
            "model registry unavailable or without %s@%s (%s); serving cached version %s",
            model_name, alias, type(exc).__name__, cached.name,
        )
        return cached
