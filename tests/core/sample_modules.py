"""Small modules for framework tests: a slow one, a crashing one, a keyed one."""

from __future__ import annotations

import asyncio
from typing import Any

from modules.context import Context
from modules.errors import ConfigError
from modules.module import ExpansionModule, ModuleConfig, secret, setting
from modules.observable import Observable
from modules.results import Answer


class SlowConfig(ModuleConfig):
    seconds: float = setting(30.0, "how long to take")


class Slow(ExpansionModule):
    name = "slow"
    title = "Slow Source"
    description = "Take longer than any deadline."
    input_types = ("domain", "hostname")
    Config = SlowConfig
    cancelled = 0

    async def enrich(self, observable: Observable, config: Any, ctx: Context) -> Answer:
        try:
            await asyncio.sleep(config.seconds)
        except asyncio.CancelledError:
            type(self).cancelled += 1
            raise
        return ctx.answer()


class Crash(ExpansionModule):
    name = "crash"
    title = "Crash"
    description = "Fail with a bug."
    input_types = ("domain",)

    async def enrich(self, observable: Observable, config: Any, ctx: Context) -> Answer:
        raise KeyError("a bug")


class KeyedConfig(ModuleConfig):
    apikey: Any = secret("the API key")
    limit: int = setting(5, "how many")


class Keyed(ExpansionModule):
    name = "keyed"
    title = "Keyed"
    description = "Echo the settings it got, the key only as present or not."
    input_types = ("domain",)
    Config = KeyedConfig

    async def enrich(self, observable: Observable, config: Any, ctx: Context) -> Answer:
        if config.apikey is None:
            raise ConfigError("Keyed: no API key: set the keyed apikey setting")
        answer = ctx.answer()
        answer.add_attribute("text", f"limit={config.limit}", "Other")
        return answer
