"""The misp-enrich command: serve, list modules, run one query, manage cache."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import signal
import socket
import sys
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from modules import __version__
from modules.errors import EnrichError, error_body
from modules.protocol import Query
from modules.ratelimit import parse_limits
from modules.registry import Registry, discover
from modules.results import dumps
from modules.settings import ServerSettings, source_policy

log = logging.getLogger("modules")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Its debug lines describe every SQL statement: noise, even when debugging.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.root.level))


def load_registry(settings: ServerSettings) -> Registry:
    disabled = {name.strip() for name in settings.disabled_modules.split(",") if name}
    return discover(disabled)


def cmd_serve(args: argparse.Namespace, settings: ServerSettings) -> int:
    from modules.app import create_app
    from modules.runner import Enricher

    updates: dict[str, Any] = {}
    if args.host:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    settings = settings.model_copy(update=updates)
    registry = load_registry(settings)
    problems = policy_problems(registry)
    for problem in problems:
        print(f"misp-enrich: {problem}", file=sys.stderr)
    if problems:
        return 2
    for origin, reason in registry.skipped.items():
        log.warning("module skipped: %s: %s", origin, reason)
    log.info("modules loaded: %s", ", ".join(registry.modules) or "none")
    warn_about_deadlines(settings)
    try:
        enricher = Enricher(registry, settings)
        asyncio.run(serve(create_app(registry, settings, enricher), settings))
    except OSError as err:
        if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
            advice = "give an address of this machine with --host or MISP_ENRICH_HOST"
        else:
            advice = "pick another port with --port or MISP_ENRICH_PORT"
        log.error(
            "cannot listen on %s:%d: %s; %s",
            settings.host,
            settings.port,
            err.strerror or err,
            advice,
        )
        return 2
    except KeyboardInterrupt:
        pass
    return 0


async def serve(app: web.Application, settings: ServerSettings) -> None:
    """Listen until SIGINT or SIGTERM, then close cleanly."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        # What start-up built lives as long as the server: left to the
        # collector, every full collection would walk it again, and
        # /modules waits behind each such pause.
        gc.freeze()
        log.info(
            "misp-enrich %s listening on http://%s:%d",
            __version__,
            settings.host,
            settings.port,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()


def port(text: str) -> int:
    """Read a TCP port number for argparse."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def policy_problems(registry: Registry) -> list[str]:
    """Check every module's server-side source settings before serving."""
    problems = []
    for module in registry.modules.values():
        try:
            policy = source_policy(module)
            parse_limits(module.name, policy.rate_limits)
            parse_limits(module.name, policy.keyless_rate_limits or ())
            # Server-side defaults alone: a bad one would fail every query.
            module.resolve_config({})
        except EnrichError as err:
            problems.append(str(err))
    return problems


def warn_about_deadlines(settings: ServerSettings) -> None:
    """Say when a deadline lets an answer arrive after MISP gave up."""
    for name, seconds, misp_setting, misp_default in (
        ("MISP_ENRICH_DEADLINE", settings.deadline, "Plugin.Enrichment_timeout", 10),
        (
            "MISP_ENRICH_HOVER_DEADLINE",
            settings.hover_deadline,
            "Plugin.Enrichment_hover_timeout",
            5,
        ),
    ):
        if seconds >= misp_default:
            log.warning(
                "%s is %g s, not below MISP's default %s of %d s: raise that "
                "setting in MISP too, or answers arrive after MISP gave up",
                name,
                seconds,
                misp_setting,
                misp_default,
            )


def cmd_modules(args: argparse.Namespace, settings: ServerSettings) -> int:
    registry = load_registry(settings)
    rows = [("NAME", "TYPES", "HOVER", "SETTINGS")]
    for module in registry.modules.values():
        rows.append(
            (
                module.name,
                ", ".join(
                    module.input_types
                    + tuple(f"object {name}" for name in module.input_objects)
                ),
                "yes" if "hover" in module.module_types else "no",
                ", ".join(module.config_keys()) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]).rstrip())
    for origin, reason in registry.skipped.items():
        print(f"skipped {origin}: {reason}", file=sys.stderr)
    return 0


def _summary(body: dict[str, Any]) -> str:
    """Render an answer as text a person reads at a terminal."""
    if "error" in body:
        return f"error: {body['error']}"
    lines = []
    results = body.get("results", {})
    for attribute in results.get("Attribute", []):
        lines.append(f"{attribute['type']}: {attribute['value']}")
    for obj in results.get("Object", []):
        lines.append(f"object {obj['name']}")
        for attribute in obj.get("Attribute", []):
            lines.append(f"  {attribute['object_relation']}: {attribute['value']}")
        for reference in obj.get("ObjectReference", []):
            lines.append(
                f"  -> {reference['relationship_type']} {reference['referenced_uuid']}"
            )
    for tag in results.get("Tag", []):
        lines.append(f"tag {tag['name']}")
    if body.get("comment"):
        lines.append(f"note: {body['comment']}")
    return "\n".join(lines) or "no results"


def cmd_query(args: argparse.Namespace, settings: ServerSettings) -> int:
    from modules.runner import Enricher

    config: dict[str, str | None] = {}
    for item in args.config or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--config takes key=value, not '{item}'", file=sys.stderr)
            return 2
        config[key] = value
    query = Query(
        module=args.module,
        config=config,
        event_id=None if args.hover else "0",
        standard=True,
        attribute_type=args.type,
        value=args.value,
        reference_uuid=args.uuid,
    )

    async def run() -> dict[str, Any]:
        enricher = Enricher(load_registry(settings), settings)
        try:
            return await enricher.run(query)
        except EnrichError as err:
            return error_body(err)
        finally:
            await enricher.close()

    body = asyncio.run(run())
    if args.summary:
        print(_summary(body))
    else:
        print(dumps(body, indent=True).decode())
    return 1 if "error" in body else 0


def cmd_cache(args: argparse.Namespace, settings: ServerSettings) -> int:
    from modules import cache_admin

    return cache_admin.run(args.action, getattr(args, "module", None), settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="misp-enrich",
        description="MISP enrichment module server (misp-modules protocol).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP server for MISP",
        description="Run the HTTP server for MISP. Every other setting comes from "
        "MISP_ENRICH_* environment variables: see docs/configuration.md.",
    )
    serve.add_argument("--host", help="address to bind (MISP_ENRICH_HOST)")
    serve.add_argument("--port", type=port, help="port to bind (MISP_ENRICH_PORT)")
    serve.set_defaults(handler=cmd_serve)

    listing = commands.add_parser("modules", help="list the modules and settings")
    listing.set_defaults(handler=cmd_modules)

    query = commands.add_parser(
        "query", help="run one enrichment in-process and print the answer"
    )
    query.add_argument("module", help="module name, e.g. dns")
    query.add_argument("type", help="MISP attribute type, e.g. domain")
    query.add_argument("value", help="attribute value, e.g. example.com")
    query.add_argument(
        "--config",
        action="append",
        metavar="KEY=VALUE",
        help="a module setting, as MISP would send it (repeatable)",
    )
    query.add_argument("--uuid", help="uuid of the attribute, for references")
    query.add_argument(
        "--hover", action="store_true", help="ask as the hover popup does"
    )
    query.add_argument(
        "--summary", action="store_true", help="print a readable summary, not JSON"
    )
    query.set_defaults(handler=cmd_query)

    cache = commands.add_parser("cache", help="show or clear the upstream cache")
    actions = cache.add_subparsers(dest="action", required=True)
    actions.add_parser("stats", help="show the backend and its entries per module")
    clear = actions.add_parser("clear", help="remove cached answers")
    clear.add_argument("module", nargs="?", help="only this module's answers")
    cache.set_defaults(handler=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = ServerSettings()
    except ValidationError as err:
        for problem in err.errors(include_input=False):
            name = "MISP_ENRICH_" + "_".join(str(p) for p in problem["loc"]).upper()
            print(f"misp-enrich: {name}: {problem['msg']}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    return int(args.handler(args, settings))


if __name__ == "__main__":
    sys.exit(main())
