"""`misp-enrich cache stats` and `misp-enrich cache clear [MODULE]`."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from modules.cache import CacheUnavailable
from modules.engine import make_cache, make_link
from modules.metrics import Metrics
from modules.registry import discover
from modules.settings import ServerSettings

# Backends the command line cannot reach: what it says instead of numbers.
UNREACHABLE = {
    "memory": (
        "the memory cache lives inside the running server's process and cannot "
        "be inspected or cleared from the command line; restarting the server "
        "empties it"
    ),
    "none": "MISP_ENRICH_CACHE=none: the server keeps no cache to show or clear",
}


def run(action: str, module: str | None, settings: ServerSettings) -> int:
    """Run one cache command against the backend the settings select."""
    unreachable = UNREACHABLE.get(settings.cache_backend)
    if unreachable is not None:
        print(unreachable, file=sys.stderr)
        return 1
    if module is not None:
        known = sorted(discover().modules)
        if module not in known:
            print(
                f"no module named '{module}'; known modules: {', '.join(known)}",
                file=sys.stderr,
            )
            return 2
    return asyncio.run(_run(action, module, settings))


async def _run(action: str, module: str | None, settings: ServerSettings) -> int:
    link = make_link(settings, Metrics())
    cache = make_cache(settings, link)
    try:
        if action == "stats":
            stats = await cache.stats()
            print(render_stats(stats))
            return 0 if stats["state"] == "up" else 1
        return await _clear(cache, module)
    finally:
        await cache.close()
        if link is not None:
            await link.close()


async def _clear(cache: Any, module: str | None) -> int:
    try:
        removed = await cache.clear(f"{module}:" if module else "")
    except CacheUnavailable as err:
        print(f"cannot clear the {cache.name} cache: {err}", file=sys.stderr)
        return 1
    noun = "entry" if removed == 1 else "entries"
    scope = f" for {module}" if module else ""
    print(f"removed {removed} {noun}{scope} from {cache.describe()}")
    return 0


def render_stats(stats: dict[str, Any]) -> str:
    """Lay the backend's statistics out as aligned lines."""
    rows = [("backend", stats["backend"])]
    if "location" in stats:
        rows.append(("location", stats["location"]))
    rows.append(("state", stats["state"]))
    if "entries" in stats:
        entries = str(stats["entries"])
        if stats.get("expired"):
            entries += f" (and {stats['expired']} expired, purged as it goes)"
        rows.append(("entries", entries))
    if "bytes" in stats:
        rows.append(("size", f"{stats['bytes']} bytes"))
    modules = stats.get("modules")
    if modules:
        listed = ", ".join(f"{name} {count}" for name, count in sorted(modules.items()))
        rows.append(("by module", listed))
    width = max(len(name) for name, _ in rows) + 2
    return "\n".join(f"{name.ljust(width)}{value}" for name, value in rows)
