"""What an operator sees when a command cannot run: one line naming the file or variable, and an exit code.

Every ``promoguard`` command runs inside :class:`OperatorGroup`, which turns the failures an operator can
fix (a bad variable, a missing or truncated file, no model in the registry, a database that does not
answer) into one line on stderr and an :class:`ExitCode` a scheduler can branch on. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup


class ExitCode(IntEnum):
    """Exit status of a ``promoguard`` command that could not run (``drift`` has its own 0-4 on top)."""

    #: A ``PROMOGUARD_*`` variable or a command-line option has a value that cannot be used.
    CONFIG = 2
    #: An input file or folder does not exist (the message names it and the command that makes it).
    MISSING_INPUT = 5
    #: An input file exists but cannot be read: truncated, not parquet, or missing a contract column.
    BAD_INPUT = 6
    #: The model registry has no such model or no champion to load or promote.
    NO_MODEL = 7
    #: A service the command needs (PostgreSQL, Redis, an MLflow server) does not answer.
    UNAVAILABLE = 8


class OperatorError(Exception):
    """A failure the operator can fix, with its message and exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        """Keep the one-line message and the exit code."""
        super().__init__(message)
        self.code = code


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line (library messages wrap theirs), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def fail(message: str, code: ExitCode) -> NoReturn:
    """Print ``error: message`` on stderr, on one line, and end the command with ``code``."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code=int(code))


def read_parquet(path: Path, **kwargs: Any) -> Any:
    """``pandas.read_parquet`` that names the file when it is missing or cannot be read."""
    import pandas as pd
    import pyarrow as pa

    if not path.exists():
        raise OperatorError(f"missing {path}", ExitCode.MISSING_INPUT)
    try:
        return pd.read_parquet(path, **kwargs)
    except (pa.ArrowException, OSError) as exc:
        raise OperatorError(
            f"{path} is not a readable parquet file (truncated or corrupted?): {exc}", ExitCode.BAD_INPUT
        ) from exc


def explain(exc: BaseException) -> OperatorError | None:
    """The operator's view of ``exc``, or None when it is not one an operator can fix (a bug)."""
    from config.settings import InvalidSettings

    if isinstance(exc, OperatorError):
        return exc
    if isinstance(exc, InvalidSettings):
        return OperatorError(f"invalid configuration: {exc}", ExitCode.CONFIG)
    if isinstance(exc, FileNotFoundError):
        name = exc.filename or exc
        return OperatorError(f"missing {name}", ExitCode.MISSING_INPUT)
    if (isinstance(exc, LookupError) and "registered" in str(exc)) or _mlflow_not_found(exc):
        return OperatorError(f"model registry: {exc}", ExitCode.NO_MODEL)
    if _unavailable(exc):
        return OperatorError(f"a service did not answer ({type(exc).__name__}): {exc}", ExitCode.UNAVAILABLE)
    if _arrow(exc):
        return OperatorError(f"an input parquet file cannot be read (truncated or corrupted?): {exc}",
                             ExitCode.BAD_INPUT)
    from features.events import ContractError

    if isinstance(exc, ContractError):
        return OperatorError(f"input does not follow the event contract: {exc}", ExitCode.BAD_INPUT)
    return None


def _mlflow_not_found(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", None)
    return type(exc).__name__ in ("MlflowException", "RestException") and code in (
        "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _unavailable(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    modules = {c.__module__.split(".", 1)[0] for c in type(exc).__mro__}
    return bool(
        ({"OperationalError", "InterfaceError"} & names and "psycopg2" in modules)
        or ({"ConnectionError", "TimeoutError"} & names and "redis" in modules)
        or isinstance(exc, ConnectionError)
    )


def _arrow(exc: BaseException) -> bool:
    return any(c.__module__.startswith("pyarrow") and c.__name__ == "ArrowException"
               for c in type(exc).__mro__)


class OperatorGroup(TyperGroup):
    """The command group every ``promoguard`` command runs in: operator failures become one line."""

    def invoke(self, ctx: Any) -> Any:
        """Run the command; an error :func:`explain` knows ends it with its line and exit code.

        Exits, aborts and usage errors are none of :func:`explain`'s kinds: they pass through unchanged.
        """
        try:
            return super().invoke(ctx)
        except Exception as exc:
            known = explain(exc)
            if known is None:
                raise
            fail(str(known), known.code)
