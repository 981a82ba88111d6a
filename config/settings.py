"""The typed settings of every promoguard deployable, read from ``PROMOGUARD_*`` environment variables.

One class, :class:`Settings`, serves the command line, the notebooks and the scoring service, so a
variable means the same thing everywhere: the model name the service loads is the name training
registers. Nothing is read at import time; :meth:`Settings.from_env` builds the settings from a mapping
(``os.environ`` unless one is given) when a command or a service worker starts. Every path is absolute,
so a command run from another folder never creates a second MLflow database or data tree.

Every ``PROMOGUARD_*`` variable in that mapping is either a field here or one of :data:`NOT_SETTINGS`;
any other is refused by name, so a misspelt variable fails the start instead of silently leaving a
default in place. Bad values are refused the same way: ``PROMOGUARD_ENGINE='x': expected one of numpy,
duckdb, spark``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from features import DEV_PEPPER

__all__ = ["DEV_PEPPER", "NOT_SETTINGS", "PREFIX", "Engine", "InvalidSettings", "OnlineStore", "Settings"]

PREFIX = "PROMOGUARD_"

OnlineStore = Literal["sqlite", "redis"]
Engine = Literal["numpy", "duckdb", "spark"]

#: ``PROMOGUARD_*`` variables that configure no deployable and are therefore allowed beside the settings.
NOT_SETTINGS: Mapping[str, str] = {
    "PROMOGUARD_REQUIRE_SERVICES": "read by the test suite: fail, not skip, when Redis or PostgreSQL is down",
    "PROMOGUARD_BENCH_ROOT": "read by benchmarks/serve.py: a built world to benchmark instead of a new one",
    "PROMOGUARD_FEATURES_DIR": "set by features/store.py while Feast parses the feature repository",
}

#: Fields whose values never appear in an error message or a repr.
_SECRET_FIELDS = frozenset({"pepper", "api_keys", "ipintel_api_key", "state_url"})


class InvalidSettings(ValueError):
    """The environment holds an unknown ``PROMOGUARD_*`` variable or a value a setting cannot take."""


#: The mapping :meth:`Settings.from_env` reads, for the one construction it makes (None: ``os.environ``).
#: pydantic-settings builds its sources inside the constructor, so the mapping cannot be an argument.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("promoguard_environ", default=None)


def _default_tracking_uri(data: dict[str, Any]) -> str:
    return f"sqlite:///{Path(data['root']) / 'mlflow' / 'mlflow.db'}"


class Settings(BaseSettings):
    """Everything a promoguard deployable needs to know about its environment.

    Fields keep the attribute names their callers use; the variable of each is
    ``PROMOGUARD_<FIELD NAME>`` unless a ``validation_alias`` names it (see :meth:`variables`).
    """

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        extra="forbid",
        frozen=True,
        # An empty variable means "not set", as the settings classes this one replaced read it.
        env_ignore_empty=True,
    )

    root: Path = Field(default=Path("."), validate_default=True)
    pepper: str = Field(default=DEV_PEPPER, repr=False)
    default_phone_region: str = Field(
        default="US", validation_alias="PROMOGUARD_PHONE_REGION", pattern=r"^[A-Za-z]{2}$"
    )
    pipeline_engine: Engine = Field(default="numpy", validation_alias="PROMOGUARD_ENGINE")
    online_store: OnlineStore = "sqlite"
    velocity_backend: OnlineStore = Field(
        default_factory=lambda data: data["online_store"], validation_alias="PROMOGUARD_VELOCITY"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_socket_timeout_s: float = Field(default=0.05, gt=0, validation_alias="PROMOGUARD_REDIS_TIMEOUT_S")
    # The identity graph (features.graph) lives beside the velocity counters (SQLite file or Redis).
    # Links not seen for this many days are pruned; a key seen with more persons than the bound (a shop
    # tablet, a library PC) stops linking anyone.
    graph_retention_days: float = Field(default=400.0, gt=0)
    graph_max_persons_per_key: int = Field(default=8, ge=1, le=1000)
    # Campaign codes that get a /metrics label of their own per worker; the others are "other".
    metrics_campaigns: int = Field(default=50, ge=0, le=10_000)
    mlflow_tracking_uri: str = Field(
        default_factory=_default_tracking_uri, validation_alias="PROMOGUARD_MLFLOW_URI"
    )
    # The name also names the service's model cache folder, hence no path separators.
    model_name: str = Field(default="promo-abuse", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    feature_service: str = "promo_abuse_v1"
    model_dir: Path | None = None
    rules_path: Path | None = Field(default=None, validation_alias="PROMOGUARD_RULES")
    tor_exit_list: str | None = None
    proxy_list: str | None = None
    ipintel_http_url: str | None = Field(default=None, validation_alias="PROMOGUARD_IPINTEL_URL")
    ipintel_api_key: str | None = Field(default=None, repr=False)
    ipintel_http_timeout_s: float = Field(default=0.2, gt=0, validation_alias="PROMOGUARD_IPINTEL_TIMEOUT_S")
    ipintel_fail_open: bool = True
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(default=(), repr=False)
    require_api_key: bool = True
    rate_limit_per_minute: int = Field(default=6000, gt=0)
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    feature_deadline_ms: float = Field(default=50.0, gt=0)
    request_deadline_ms: float = Field(default=200.0, gt=0)
    # Circuit breakers of the service's dependencies (serving.breaker): after this many failures in a
    # row a dependency is skipped (the rules answer at once) for the cool-down, then probed. 0: off.
    breaker_failures: int = Field(default=3, ge=0, le=1000)
    breaker_cooldown_s: float = Field(default=2.0, gt=0, le=3600)
    # Shadow scoring: a challenger (a registered version or alias, and/or a rules file) scores a share of
    # live traffic off the request path (serving.shadow). Off while the share is 0.
    shadow_model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    shadow_rules: Path | None = None
    shadow_share: float = Field(default=0.0, ge=0, le=1)
    shadow_queue: int = Field(default=1000, gt=0, le=1_000_000)
    # The exploration holdout: per promotion type (``default`` for the others), the share of model-threshold
    # verify/refuse answers let through as allow. Pairs, not a dict, so the frozen settings stay hashable.
    exploration: Annotated[tuple[tuple[str, float], ...], NoDecode] = ()
    seed: int = 7
    # Retention (``promoguard maintenance``): days of decisions the scoring log keeps, their outcomes,
    # labels and shadow rows with them; and days the velocity store keeps counter members and request
    # ids, at least the longest window a counter is read with (30 days: the referral cross-check).
    scores_retention_days: float = Field(default=90.0, gt=0)
    velocity_retention_days: float = Field(default=31.0, ge=30)
    # Where the service's shared state lives: the scoring log with its idempotency records, outcomes,
    # feedback and shadow rows, and the campaign controls and allow/deny lists. Unset: SQLite files in
    # serving_dir (one replica); a postgresql:// URL lets every replica answer any call.
    state_url: str | None = Field(default=None, repr=False)
    # Seconds between two reads of the campaign controls and lists by a running service.
    controls_refresh_s: float = Field(default=2.0, gt=0, le=300)
    # The scoring log written by a background thread per worker, in batches, off the request path
    # (scoring.log_queue); at most this many answers wait in memory before appends write synchronously.
    # Off by default: it saves ~5% CPU per request, but twins that reach two workers (or replicas) within
    # one batch window each get an answer of their own, and a log that is down at shutdown loses the queue.
    log_queue: bool = False
    log_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    # BentoML's OpenTelemetry middleware and per-request access log cost a worker CPU on every request;
    # both are off unless asked for (the scoring log and /metrics already account for every request).
    tracing: bool = False
    access_log: bool = False
    # Feast's offline store for point-in-time training frames and the backtest's history: file (DuckDB,
    # in process) or spark (Feast's Spark offline store over the same parquet sources).
    offline_store: Literal["file", "spark"] = "file"
    spark_master: str = "local[2]"
    # The Spark driver's heap (spark.driver.memory); in local mode it holds the whole job.
    spark_driver_memory: str = Field(default="2g", pattern=r"^[0-9]+[kmgt]?$")

    @field_validator("root", "model_dir", "rules_path", "shadow_rules")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("default_phone_region")
    @classmethod
    def _region_upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("exploration", mode="before")
    @classmethod
    def _exploration_shares(cls, value: Any) -> Any:
        # One number is a share for every promotion type; a JSON object one per type.
        if isinstance(value, str):
            text = value.strip()
            try:
                return (("default", float(text)),)
            except ValueError:
                pass
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if not isinstance(value, Mapping):
                raise ValueError(
                    'expected a share 0-1 or a JSON object of shares by promotion type ({"welcome": 0.02})'
                )
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (("default", float(value)),)
        if isinstance(value, Mapping):
            return tuple(sorted(value.items()))
        return value

    @field_validator("exploration")
    @classmethod
    def _exploration_known(cls, value: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
        for name, share in value:
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"the share of {name} must be between 0 and 1, got {share}")
        if all(name == "default" for name, _ in value):
            # Nothing to check against the promotion types, whose module (the event contract's pandera
            # schemas) is half a second of every command's start.
            return value
        from features.events import PROMO_TYPES

        known = [*PROMO_TYPES, "default"]
        for name, _ in value:
            if name not in known:
                raise ValueError(f"unknown promotion type {name!r}: expected one of {', '.join(known)}")
        return value

    @field_validator("state_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("expected a postgresql:// URL (unset: SQLite files in the serving folder)")
        return value

    @field_validator("ipintel_http_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # Only the form is checked here; the provider refuses private hosts when it is built, because
        # that takes a DNS lookup and settings are also built where no IP intelligence is wanted.
        parts = urlsplit(value) if value is not None else None
        if parts is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit arguments, then the environment; no ``.env`` file or secrets folder behind one's back."""
        return init_settings, _Environment(settings_cls, _ENVIRON.get())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, root: Path | None = None) -> Settings:
        """Build settings from the ``PROMOGUARD_*`` variables of ``environ`` (default: ``os.environ``).

        ``root`` overrides ``PROMOGUARD_ROOT`` (the command line's ``--root``). Raise
        :class:`InvalidSettings` naming every unknown variable and every bad value.
        """
        token = _ENVIRON.set(environ)
        try:
            return cls() if root is None else cls(root=root)
        except ValidationError as exc:
            raise InvalidSettings(_explain(exc, cls)) from None
        finally:
            _ENVIRON.reset(token)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """The environment variable of each field, by field name (README's table lists exactly these)."""
        return {name: _variable(cls, name) for name in cls.model_fields}

    @property
    def data_dir(self) -> Path:
        """Run-time data: raw/, features/, feast/, reports/, serving/."""
        return self.root / "data"

    @property
    def raw_dir(self) -> Path:
        """Where events, labels, promotions and simulator ground truth live."""
        return self.data_dir / "raw"

    @property
    def features_dir(self) -> Path:
        """Point-in-time aggregate parquet files (Feast offline sources)."""
        return self.data_dir / "features"

    @property
    def feast_dir(self) -> Path:
        """Feast registry and SQLite online store."""
        return self.data_dir / "feast"

    @property
    def reports_dir(self) -> Path:
        """Drift reports for the fraud team."""
        return self.data_dir / "reports"

    @property
    def serving_dir(self) -> Path:
        """Velocity counters, scoring log and the local model cache of the service."""
        return self.data_dir / "serving"

    @property
    def tor_exit_source(self) -> str | None:
        """The Tor exit feed: the configured one, else the simulator's dated feed when present."""
        return self.tor_exit_list or self._simulated_feed("tor_exits.txt")

    @property
    def proxy_source(self) -> str | None:
        """The known proxy/VPN feed: the configured one, else the simulator's dated feed when present."""
        return self.proxy_list or self._simulated_feed("proxies.txt")

    def _simulated_feed(self, name: str) -> str | None:
        path = self.raw_dir / "ipintel" / name
        return str(path) if path.exists() else None

    @property
    def exploration_shares(self) -> dict[str, float]:
        """The exploration share per promotion type (``default``: every type without its own)."""
        return dict(self.exploration)

    @property
    def uses_dev_pepper(self) -> bool:
        """True when identity hashes are keyed with the public development pepper."""
        return self.pepper == DEV_PEPPER


def _variable(cls: type[BaseSettings], name: str) -> str:
    alias = cls.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else PREFIX + name.upper()


class _Environment(EnvSettingsSource):
    """The variables of one mapping; unknown ``PROMOGUARD_*`` names are passed on for extra=forbid to name."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> None:
        super().__init__(settings_cls)
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        # The same normalisation the base class applies to os.environ, applied to the given mapping.
        self.env_vars = {
            (name if self.case_sensitive else name.lower()): value
            for name, value in self.environ.items()
            if not (self.env_ignore_empty and value == "")
        }

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        known = {_variable(self.settings_cls, name) for name in self.settings_cls.model_fields}
        known |= set(NOT_SETTINGS)
        for name, value in self.environ.items():
            if name.upper().startswith(PREFIX) and name.upper() not in known:
                data[name] = value
        return data


def _expected(error: Any) -> str:
    kind = error["type"]
    if kind == "literal_error":
        return "expected one of " + ", ".join(re.findall(r"'([^']*)'", error["ctx"]["expected"]))
    if kind in ("float_parsing", "float_type"):
        return "expected a number"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "expected a whole number"
    if kind == "bool_parsing":
        return "expected true or false (or 1/0, yes/no, on/off)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return message.replace("Input should be", "expected").replace("String should", "expected to")


def _explain(exc: ValidationError, cls: type[Settings]) -> str:
    """One line per problem, each naming the environment variable an operator has to fix."""
    variables = cls.variables()
    field_of = {variable: name for name, variable in variables.items()}
    problems = []
    for error in exc.errors():
        if error["type"] == "default_factory_not_called":
            continue  # a consequence of another field's error, which is reported itself
        key = str(error["loc"][0]) if error["loc"] else "?"
        field = key if key in variables else field_of.get(key)
        if field is None:
            guess = difflib.get_close_matches(key.upper(), list(variables.values()), n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            problems.append(f"{key}: not a promoguard setting{hint}; README.md, Configuration, lists them")
            continue
        shown = "" if field in _SECRET_FIELDS else f"={error['input']!r}"
        problems.append(f"{variables[field]}{shown}: {_expected(error)}")
    return "; ".join(problems)
