"""Run one query: find the module, normalise, resolve config, enrich in time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import aiohttp

from modules.context import Context
from modules.engine import Engine
from modules.errors import (
    DeadlineExceeded,
    EnrichError,
    ModuleFailed,
    UnknownModule,
    UnsupportedType,
    shown,
)
from modules.module import ExpansionModule
from modules.observable import normalise
from modules.protocol import Query
from modules.registry import Registry
from modules.results import dumps
from modules.settings import ServerSettings
from modules.upstream import Source, make_session

log = logging.getLogger(__name__)


def pick_observable(
    module: type[ExpansionModule], query: Query
) -> tuple[str, str, str | None]:
    """Return the (type, value, reference uuid) the module should enrich."""
    if query.object_name is not None:
        if query.object_name not in module.input_objects:
            handled = ", ".join(module.input_objects) or "none"
            raise UnsupportedType(
                f"{module.name} does not enrich {shown(query.object_name)} objects; "
                f"objects it enriches: {handled}"
            )
        accepted = [
            attribute
            for attribute in query.object_attributes
            if attribute.type in module.input_types
        ]
        if not accepted:
            raise UnsupportedType(
                f"{module.name} cannot enrich this {query.object_name} object: none "
                f"of its attributes has a type it handles "
                f"({', '.join(module.input_types)})"
            )
        # Prefer the type the module lists first (e.g. sha256 before md5).
        accepted.sort(key=lambda attribute: module.input_types.index(attribute.type))
        return accepted[0].type, accepted[0].value, query.reference_uuid
    assert query.attribute_type is not None and query.value is not None
    for attribute_type, value in query.pairs:
        # A simplified body may carry other MISP type names (a comment, say).
        if attribute_type in module.input_types:
            return attribute_type, value, query.reference_uuid
    if query.attribute_type not in module.input_types:
        handled = ", ".join(module.input_types)
        raise UnsupportedType(
            f"{module.name} does not handle attribute type "
            f"{shown(query.attribute_type)}; it handles: {handled}"
        )
    return query.attribute_type, query.value, query.reference_uuid


class QueryRunner(Protocol):
    """What the HTTP app needs of whatever answers its queries."""

    @property
    def registry(self) -> Registry: ...

    @property
    def settings(self) -> ServerSettings: ...

    @property
    def engine(self) -> Engine: ...

    async def start(self) -> None: ...

    async def answer(self, query: Query) -> bytes: ...

    def module(self, name: str) -> type[ExpansionModule]: ...

    async def close(self) -> None: ...


class Enricher:
    """Owns the registry, the engine and the HTTP session; runs queries."""

    def __init__(
        self,
        registry: Registry,
        settings: ServerSettings,
        engine: Engine | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.engine = engine or Engine(settings)
        self._session: aiohttp.ClientSession | None = None
        self._instances: dict[str, ExpansionModule] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = make_session(self.settings.ca_bundle)
        return self._session

    async def start(self) -> None:
        """Open the engine's backends."""
        await self.engine.start()

    async def answer(self, query: Query) -> bytes:
        """Answer a query as the bytes of its JSON body."""
        return dumps(await self.run(query))

    async def close(self) -> None:
        for instance in self._instances.values():
            await instance.close()
        if self._session is not None:
            await self._session.close()
        await self.engine.close()

    def module(self, name: str) -> type[ExpansionModule]:
        """Return the module MISP names, or raise UnknownModule."""
        module = self.registry.get(name)
        if module is None:
            if name in self.registry.disabled:
                raise UnknownModule(
                    f"module '{name}' is disabled on this server "
                    "(MISP_ENRICH_DISABLED_MODULES)"
                )
            known = ", ".join(sorted(self.registry.modules)) or "none"
            raise UnknownModule(
                f"unknown module {shown(name)}; this server has: {known}"
            )
        return module

    def deadline_for(self, query: Query) -> float:
        if query.short_deadline:
            return self.settings.hover_deadline
        return self.settings.deadline

    async def run(self, query: Query) -> dict[str, Any]:
        """Answer a query; every failure becomes a typed EnrichError."""
        module = self.module(query.module)
        attribute_type, value, reference_uuid = pick_observable(module, query)
        observable = normalise(attribute_type, value)
        config = module.resolve_config(query.config)

        seconds = self.deadline_for(query)
        loop = asyncio.get_running_loop()
        source = Source(
            self.engine, self.session, module, config, loop.time() + seconds
        )
        ctx = Context(
            source,
            reference_uuid,
            query.hover,
            query.event_id,
            query.data,
            frozenset((observable.value, *observable.parts.values())),
        )
        instance = self._instances.get(module.name)
        if instance is None:
            instance = self._instances[module.name] = module()
        try:
            async with asyncio.timeout(seconds):
                answer = await instance.enrich(observable, config, ctx)
            if query.standard:
                return answer.to_standard(hover=query.hover)
            return answer.to_simplified()
        except TimeoutError:
            setting = "HOVER_DEADLINE" if query.short_deadline else "DEADLINE"
            raise DeadlineExceeded(
                module.title,
                f"no answer within the {seconds:g} s deadline; the query was "
                f"cancelled (raise MISP_ENRICH_{setting} if MISP waits longer)",
            ) from None
        except EnrichError:
            raise
        except Exception as err:
            # A bug, or a source answer of a shape the module did not expect:
            # either way the analyst learns which source, the log the rest.
            log.exception("module %s failed on a %s", module.name, attribute_type)
            raise ModuleFailed(
                f"{module.title}: internal error ({type(err).__name__}) while "
                "building the answer; the server log has details"
            ) from err
