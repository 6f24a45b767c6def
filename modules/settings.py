"""Server settings, read from MISP_ENRICH_* environment variables."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import platformdirs
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modules.errors import ConfigError

if TYPE_CHECKING:
    from modules.module import ExpansionModule

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
T = TypeVar("T")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def default_cache_path() -> Path:
    """Return the SQLite cache file under the user's cache directory."""
    return Path(platformdirs.user_cache_dir("misp-enrich")) / "cache.sqlite3"


class ServerSettings(BaseSettings):
    """Settings of the server itself (modules read theirs separately)."""

    # A bad Redis URL may hold a password: errors name the field, not the value.
    model_config = SettingsConfigDict(
        env_prefix="MISP_ENRICH_", extra="ignore", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(6666, ge=0, le=65535)
    deadline: float = Field(
        8.0, gt=0, allow_inf_nan=False, description="seconds for an enrichment"
    )
    hover_deadline: float = Field(
        4.0, gt=0, allow_inf_nan=False, description="seconds for a hover"
    )
    max_body: int = Field(64 * 1024 * 1024, gt=0, description="bytes per request")
    max_upstream_body: int = Field(
        32 * 1024 * 1024, gt=0, description="bytes per answer from a source"
    )
    ca_bundle: str | None = None
    upstream_timeout: float = Field(10.0, gt=0, description="seconds per call")
    cache: Literal["sqlite", "memory", "redis", "none"] | None = None
    cache_path: Path = Field(default_factory=default_cache_path)
    cache_hold: float = Field(
        30.0, ge=0, description="seconds a SQLite entry read last stays in memory"
    )
    redis_url: str | None = None
    redis_prefix: str = Field("misp-enrich", min_length=1, description="key prefix")
    redis_timeout: float = Field(0.5, gt=0, description="seconds per Redis command")
    backend_retry: float = Field(
        5.0, ge=0, description="seconds before a failed cache or Redis is tried again"
    )
    fleet_size: int = Field(
        1,
        ge=1,
        description="replicas sharing one Redis, to split rate limits without it",
    )
    retries: int = Field(2, ge=0, le=10, description="retries of a transient failure")
    retry_backoff: float = Field(0.25, ge=0, description="first retry delay, seconds")
    breaker_threshold: int = Field(
        5, ge=1, description="failures in a row that open a source's breaker"
    )
    breaker_cooldown: float = Field(
        30.0, ge=0, description="seconds an open breaker waits before a probe"
    )
    rate_limit_margin: float = Field(
        0.5, ge=0, description="seconds a rate-limit or retry wait leaves for the call"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    disabled_modules: str = ""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(REDIS_SCHEMES):
            raise ValueError(
                "MISP_ENRICH_REDIS_URL must start with redis://, rediss:// or unix://"
            )
        return value or None

    @model_validator(mode="after")
    def _redis_needs_url(self) -> ServerSettings:
        if self.cache == "redis" and not self.redis_url:
            raise ValueError("MISP_ENRICH_CACHE=redis needs MISP_ENRICH_REDIS_URL")
        return self

    @property
    def cache_backend(self) -> str:
        """Return the cache backend in force: explicit, else Redis or SQLite."""
        if self.cache:
            return self.cache
        return "redis" if self.redis_url else "sqlite"


@dataclass(frozen=True)
class SourcePolicy:
    """How the engine treats one module's source: declared, then overridden."""

    cache_ttl: float
    not_found_ttl: float
    rate_limits: tuple[str, ...]
    concurrency: int
    keyless_rate_limits: tuple[str, ...] | None = None


def parse_duration(text: str) -> float:
    """Read seconds from "90", "90s", "15m", "24h" or "1d"."""
    match = DURATION.match(text)
    if match is None:
        raise ValueError(f"'{text}' is not a duration such as 3600, 15m, 24h or 1d")
    return float(match.group(1)) * SECONDS[match.group(2)]


def split_limits(text: str) -> tuple[str, ...]:
    """Split "4/minute;500/day" into its limits; "" and "none" mean no limit."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(part.strip() for part in re.split(r"[;,]", text) if part.strip())


def source_policy(module: type[ExpansionModule]) -> SourcePolicy:
    """Return the module's declared policy with MISP_ENRICH_<MODULE>_* applied."""
    prefix = module.env_prefix()
    try:
        cache_ttl = _override(
            prefix + "CACHE_TTL", parse_duration, float(module.cache_ttl)
        )
        not_found_ttl = _override(
            prefix + "NOT_FOUND_TTL", parse_duration, float(module.not_found_ttl)
        )
        limits = _override(prefix + "RATE_LIMITS", split_limits, module.rate_limits)
        concurrency = _override(prefix + "CONCURRENCY", _positive, module.concurrency)
        keyless = module.keyless_rate_limits
        if keyless is not None:
            keyless = _override(prefix + "KEYLESS_RATE_LIMITS", split_limits, keyless)
    except ValueError as err:
        raise ConfigError(f"{module.name}: {err}") from err
    return SourcePolicy(
        cache_ttl=cache_ttl,
        not_found_ttl=min(not_found_ttl, cache_ttl),
        rate_limits=tuple(limits),
        concurrency=concurrency,
        keyless_rate_limits=None if keyless is None else tuple(keyless),
    )


def _override(name: str, parse: Callable[[str], T], default: T) -> T:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return parse(value)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"'{text}' is not a positive whole number")
    return int(text)
