"""Typed settings for the promoguard command line and service, built explicitly from the environment.

Nothing here runs at import time: callers build one ``Settings`` with :func:`Settings.from_env` and
pass the pieces each stage needs. Every path is absolute, so a command run from another folder never
creates a second MLflow database or data tree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from features import DEV_PEPPER

OnlineStore = Literal["sqlite", "redis"]
Engine = Literal["numpy", "duckdb", "spark"]


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Everything a promoguard deployable needs to know about its environment."""

    root: Path
    pepper: str = DEV_PEPPER
    default_phone_region: str = "US"
    pipeline_engine: Engine = "numpy"
    online_store: OnlineStore = "sqlite"
    velocity_backend: OnlineStore = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_socket_timeout_s: float = 0.05
    mlflow_tracking_uri: str = ""
    model_name: str = "promo-abuse"
    feature_service: str = "promo_abuse_v1"
    tor_exit_list: str | None = None
    proxy_list: str | None = None
    ipintel_http_url: str | None = None
    ipintel_http_timeout_s: float = 0.2
    ipintel_fail_open: bool = True
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    require_api_key: bool = True
    rate_limit_per_minute: int = 6000
    feature_deadline_ms: float = 50.0
    request_deadline_ms: float = 200.0
    seed: int = 7

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
    def uses_dev_pepper(self) -> bool:
        """True when identity hashes are keyed with the public development pepper."""
        return self.pepper == DEV_PEPPER

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, root: Path | None = None) -> Settings:
        """Build settings from ``PROMOGUARD_*`` variables; ``root`` defaults to the current folder."""
        env = dict(os.environ if environ is None else environ)
        base = (root or Path(env.get("PROMOGUARD_ROOT", ".") or ".")).resolve()
        tracking = env.get("PROMOGUARD_MLFLOW_URI") or f"sqlite:///{base / 'mlflow' / 'mlflow.db'}"
        keys = tuple(k for k in env.get("PROMOGUARD_API_KEYS", "").split(",") if k.strip())
        engine = env.get("PROMOGUARD_ENGINE", "numpy")
        online = env.get("PROMOGUARD_ONLINE_STORE", "sqlite")
        velocity = env.get("PROMOGUARD_VELOCITY", online)
        for name, value, allowed in (
            ("PROMOGUARD_ENGINE", engine, ("numpy", "duckdb", "spark")),
            ("PROMOGUARD_ONLINE_STORE", online, ("sqlite", "redis")),
            ("PROMOGUARD_VELOCITY", velocity, ("sqlite", "redis")),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
        return cls(
            root=base,
            pepper=env.get("PROMOGUARD_PEPPER") or DEV_PEPPER,
            default_phone_region=env.get("PROMOGUARD_PHONE_REGION", "US"),
            pipeline_engine=engine,  # type: ignore[arg-type]
            online_store=online,  # type: ignore[arg-type]
            velocity_backend=velocity,  # type: ignore[arg-type]
            redis_url=env.get("PROMOGUARD_REDIS_URL", "redis://127.0.0.1:6379/0"),
            redis_socket_timeout_s=float(env.get("PROMOGUARD_REDIS_TIMEOUT_S", "0.05")),
            mlflow_tracking_uri=tracking,
            tor_exit_list=env.get("PROMOGUARD_TOR_EXIT_LIST") or None,
            proxy_list=env.get("PROMOGUARD_PROXY_LIST") or None,
            ipintel_http_url=env.get("PROMOGUARD_IPINTEL_URL") or None,
            ipintel_fail_open=_bool(env.get("PROMOGUARD_IPINTEL_FAIL_OPEN"), True),
            api_keys=keys,
            require_api_key=_bool(env.get("PROMOGUARD_REQUIRE_API_KEY"), True),
            seed=int(env.get("PROMOGUARD_SEED", "7")),
        )
