"""Server settings, read from MISP_ENRICH_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_path() -> Path:
    """Return the SQLite cache file under the user's cache directory."""
    return Path(platformdirs.user_cache_dir("misp-enrich")) / "cache.sqlite3"


class ServerSettings(BaseSettings):
    """Settings of the server itself (modules read theirs separately)."""

    model_config = SettingsConfigDict(env_prefix="MISP_ENRICH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(6666, ge=0, le=65535)
    deadline: float = Field(8.0, gt=0, description="seconds for an enrichment")
    hover_deadline: float = Field(4.0, gt=0, description="seconds for a hover")
    max_body: int = Field(64 * 1024 * 1024, gt=0, description="bytes per request")
    ca_bundle: str | None = None
    upstream_timeout: float = Field(10.0, gt=0, description="seconds per call")
    cache: Literal["sqlite", "memory", "redis", "none"] | None = None
    cache_path: Path = Field(default_factory=default_cache_path)
    redis_url: str | None = None
    log_level: str = "INFO"
    disabled_modules: str = ""

    @property
    def cache_backend(self) -> str:
        """Return the cache backend in force: explicit, else Redis or SQLite."""
        if self.cache:
            return self.cache
        return "redis" if self.redis_url else "sqlite"
