"""What an expansion module declares, and how its config is resolved."""

from __future__ import annotations

import hashlib
import os
import re
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from modules.errors import ConfigError

if TYPE_CHECKING:
    from modules.context import Context
    from modules.observable import Observable
    from modules.results import Answer


class ModuleConfig(BaseModel):
    """Base of a module's settings; field names are MISP's config keys."""

    model_config = ConfigDict(extra="ignore", frozen=True)


MAX_SECRET = 256
SECRET_SHAPE = re.compile(rf"[!-~]{{1,{MAX_SECRET}}}")


def secret(description: str = "") -> Any:
    """Declare a secret setting, such as an API key."""
    return Field(None, description=description, json_schema_extra={"secret": True})


def setting(default: Any = None, description: str = "", **kwargs: Any) -> Any:
    """Declare a plain setting."""
    return Field(default, description=description, **kwargs)


class ExpansionModule:
    """An expansion module: one OSINT source, declared as data."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    author: ClassVar[str] = "misp-enrich"
    version: ClassVar[str] = "1.0"
    input_types: ClassVar[tuple[str, ...]]
    input_objects: ClassVar[tuple[str, ...]] = ()
    output_types: ClassVar[tuple[str, ...]] = ()
    module_types: ClassVar[tuple[str, ...]] = ("expansion", "hover")
    references: ClassVar[tuple[str, ...]] = ()
    features: ClassVar[str] = ""
    logo: ClassVar[str] = ""
    requirements: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[ModuleConfig]] = ModuleConfig

    # Where the source lives and how it is treated by the upstream engine.
    base_url: ClassVar[str | None] = None
    third_party: ClassVar[bool] = True
    auth_statuses: ClassVar[tuple[int, ...]] = (401,)
    cache_ttl: ClassVar[int] = 3600
    not_found_ttl: ClassVar[int] = 600
    rate_limits: ClassVar[tuple[str, ...]] = ()
    # Limits for calls without an API key, where the source allows fewer.
    keyless_rate_limits: ClassVar[tuple[str, ...] | None] = None
    concurrency: ClassVar[int] = 8
    # False where failures belong to one indicator, not to the source (DNS).
    uses_breaker: ClassVar[bool] = True

    async def enrich(self, observable: Observable, config: Any, ctx: Context) -> Answer:
        """Enrich one observable and return the answer."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the module holds open (sockets), at shutdown."""

    @classmethod
    def env_prefix(cls) -> str:
        return "MISP_ENRICH_" + re.sub(r"[^A-Z0-9]", "_", cls.name.upper()) + "_"

    @classmethod
    def config_keys(cls) -> list[str]:
        return list(cls.Config.model_fields)

    @classmethod
    def secret_keys(cls) -> list[str]:
        return [
            key
            for key, info in cls.Config.model_fields.items()
            if isinstance(info.json_schema_extra, dict)
            and info.json_schema_extra.get("secret")
        ]

    @classmethod
    def resolved_base_url(cls) -> str | None:
        """Return the source's base URL: the server-side override, else ours."""
        url = os.environ.get(cls.env_prefix() + "BASE_URL") or cls.base_url
        return url.rstrip("/") if url else None

    @classmethod
    def resolve_config(cls, sent: dict[str, Any] | None) -> ModuleConfig:
        """Merge what MISP sent with server-side defaults and validate it."""
        values: dict[str, Any] = {}
        sent = sent or {}
        for key in cls.Config.model_fields:
            value = sent.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                value = os.environ.get(cls.env_prefix() + key.upper())
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            if isinstance(value, str):
                value = value.strip()
                if any(ord(char) < 32 or ord(char) == 127 for char in value):
                    # Never echoed: the value may be a key pasted with a line break.
                    raise ConfigError(cls._invalid(key, "it holds control characters"))
                if cls.is_secret(key) and not SECRET_SHAPE.fullmatch(value):
                    # Keys travel in headers: anything else is a paste gone wrong.
                    raise ConfigError(
                        cls._invalid(
                            key,
                            "an API key is printable ASCII without spaces, at most "
                            f"{MAX_SECRET} characters",
                        )
                    )
            values[key] = value
        try:
            return cls.Config(**values)
        except ValidationError as err:
            problems = err.errors(include_input=False)
            first = problems[0]
            key = ".".join(str(part) for part in first["loc"])
            raise ConfigError(cls._invalid(key, first["msg"])) from None

    @classmethod
    def is_secret(cls, key: str) -> bool:
        """Tell whether a setting is marked secret."""
        extra = cls.Config.model_fields[key].json_schema_extra
        return isinstance(extra, dict) and bool(extra.get("secret"))

    @classmethod
    def _invalid(cls, key: str, problem: str) -> str:
        where = f"Plugin.Enrichment_{cls.name}_{key} or {cls.env_prefix()}{key.upper()}"
        return f"{cls.title}: invalid setting {key} ({where}): {problem}"


def key_identity(config: ModuleConfig) -> str:
    """Return a short hash that tells API keys apart without revealing them."""
    secrets = [
        value.get_secret_value()
        for value in (getattr(config, key) for key in type(config).model_fields)
        if isinstance(value, SecretStr)
    ]
    if not secrets:
        return "-"
    return hashlib.sha256("\0".join(secrets).encode()).hexdigest()[:16]


def secret_values(config: ModuleConfig) -> list[str]:
    """Return the secret values of a config, to scrub them from any text."""
    return [
        value.get_secret_value()
        for value in (getattr(config, key) for key in type(config).model_fields)
        if isinstance(value, SecretStr) and value.get_secret_value()
    ]
