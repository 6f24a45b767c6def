"""Find expansion modules (built-in and third-party by one path) and list them."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import orjson

from modules.module import ExpansionModule

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "misp_enrich.expansion"
REQUIRED = ("name", "title", "description", "input_types")


@dataclass
class Registry:
    """The modules this server offers, and the ones it had to skip."""

    modules: dict[str, type[ExpansionModule]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)

    def add(self, module: type[ExpansionModule], origin: str) -> None:
        missing = [name for name in REQUIRED if not getattr(module, name, None)]
        if missing:
            self.skipped[origin] = f"declares no {', '.join(missing)}"
            return
        if module.name in self.modules:
            self.skipped[origin] = f"module name '{module.name}' is already taken"
            return
        self.modules[module.name] = module

    def get(self, name: str) -> type[ExpansionModule] | None:
        return self.modules.get(name)


def _module_classes(source: ModuleType) -> list[type[ExpansionModule]]:
    return [
        obj
        for obj in vars(source).values()
        if inspect.isclass(obj)
        and issubclass(obj, ExpansionModule)
        and obj is not ExpansionModule
        and obj.__module__ == source.__name__
        and not inspect.isabstract(obj)
    ]


def discover(disabled: set[str] | None = None) -> Registry:
    """Load every module of the expansion package and of the entry-point group."""
    disabled = disabled or set()
    registry = Registry()
    loaders: list[tuple[str, Any]] = []
    package = importlib.import_module("expansion")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            name = f"expansion.{info.name}"
            loaders.append((name, lambda name=name: importlib.import_module(name)))
    for point in entry_points(group=ENTRY_POINT_GROUP):
        loaders.append((f"{point.name} ({point.value})", point.load))

    for origin, load in loaders:
        try:
            loaded = load()
        except Exception as err:
            log.warning("skipped module %s: import failed: %s", origin, err)
            registry.skipped[origin] = f"import failed: {err}"
            continue
        if inspect.isclass(loaded) and issubclass(loaded, ExpansionModule):
            classes = [loaded]
        elif isinstance(loaded, ModuleType):
            classes = _module_classes(loaded)
        else:
            registry.skipped[origin] = "is neither a module nor an ExpansionModule"
            continue
        for module in classes:
            if module.name in disabled:
                registry.skipped[origin] = "disabled by MISP_ENRICH_DISABLED_MODULES"
                registry.disabled.add(module.name)
                continue
            registry.add(module, origin)
    for name in sorted(disabled - registry.disabled):
        registry.skipped[f"MISP_ENRICH_DISABLED_MODULES={name}"] = "no such module"
    return registry


def describe(module: type[ExpansionModule]) -> dict[str, Any]:
    """Return one entry of GET /modules, in misp-modules' shape."""
    inputs = list(module.input_types) + list(module.input_objects)
    return {
        "name": module.name,
        "type": "expansion",
        "mispattributes": {
            "input": inputs,
            "output": list(module.output_types),
            "format": "misp_standard",
        },
        "meta": {
            "name": module.title,
            "version": module.version,
            "author": module.author,
            "description": module.description,
            "module-type": list(module.module_types),
            "config": module.config_keys(),
            "logo": module.logo,
            "requirements": list(module.requirements),
            "features": module.features,
            "references": list(module.references),
            "input": ", ".join(inputs),
            "output": ", ".join(module.output_types),
        },
    }


def modules_body(registry: Registry) -> bytes:
    """Return GET /modules as prebuilt bytes."""
    return orjson.dumps([describe(m) for m in registry.modules.values()])
