"""Write docs/modules.md from the modules' own declarations."""

from __future__ import annotations

import sys

from modules.module import ExpansionModule
from modules.registry import discover

HEADER = """# Module catalogue

Generated from the modules' own declarations by `make docs`
(`python -m modules.catalogue > docs/modules.md`); a test fails when this
file is out of date.
"""


def _setting(module: type[ExpansionModule], key: str) -> str:
    info = module.Config.model_fields[key]
    secret = key in module.secret_keys()
    default = "" if info.default is None or secret else f" (default `{info.default}`)"
    kind = "secret" if secret else "setting"
    env = f"`{module.env_prefix()}{key.upper()}`"
    return (
        f"- `{key}` ({kind}; server default {env}){default}: {info.description or ''}"
    )


def entry(module: type[ExpansionModule]) -> str:
    """Return the catalogue section of one module."""
    lines = [f"## {module.name}: {module.title}", "", module.description, ""]
    if module.features:
        lines += [module.features, ""]
    inputs = module.input_types + tuple(f"object {o}" for o in module.input_objects)
    lines += [
        f"- Input: {', '.join(f'`{t}`' for t in inputs)}",
        f"- Output: {', '.join(f'`{t}`' for t in module.output_types) or '-'}",
        f"- Shows in: {', '.join(module.module_types)}",
        f"- Source: {module.base_url} (override with `{module.env_prefix()}BASE_URL`)"
        if module.base_url
        else "- Source: not an HTTP API",
        "- Sends the indicator to a third party: "
        + ("yes" if module.third_party else "no"),
        f"- Cache lifetime: {module.cache_ttl} s; not found: {module.not_found_ttl} s",
        f"- Rate limits: {', '.join(module.rate_limits) or 'none declared'}",
    ]
    keys = module.config_keys()
    if keys:
        lines += ["- Settings:"] + ["  " + _setting(module, key) for key in keys]
    if module.references:
        lines += ["- References: " + ", ".join(module.references)]
    return "\n".join(lines).rstrip() + "\n"


def render() -> str:
    """Return the whole catalogue."""
    registry = discover()
    modules = sorted(registry.modules.values(), key=lambda m: m.name)
    index = "\n".join(
        f"- [{m.name}](#{m.name}-{m.title.lower().replace(' ', '-')})" for m in modules
    )
    sections = "\n".join(entry(module) for module in modules)
    return f"{HEADER}\n{index}\n\n{sections}"


if __name__ == "__main__":
    sys.stdout.write(render())
