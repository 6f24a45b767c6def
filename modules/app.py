"""The HTTP service MISP talks to: /modules, /query and friends."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from modules import __version__
from modules.errors import BadRequest, EnrichError, error_body
from modules.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modules.openapi import openapi_document
from modules.protocol import parse_query
from modules.registry import Registry, modules_body
from modules.results import dumps
from modules.runner import Enricher, QueryRunner
from modules.settings import ServerSettings

log = logging.getLogger(__name__)
access_log = logging.getLogger("modules.access")

LARGE_BODY = 1 << 20
MAX_CONTAINERS = 100_000

ENRICHER = web.AppKey("enricher", QueryRunner)
MODULES_BODY = web.AppKey("modules_body", bytes)
OPENAPI_BODY = web.AppKey("openapi_body", bytes)

REQUEST_ID = web.RequestKey("request_id", str)
MODULE = web.RequestKey("module", str)
OUTCOME = web.RequestKey("outcome", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def loggable(name: str | None, limit: int = 40) -> str:
    """Return a module name as sent, safe for one log line: printable, short."""
    if name is None:
        return "-"
    text = name.encode("unicode_escape").decode("ascii")
    return text[:limit] + "..." if len(text) > limit else text


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=dumps(body), status=status, content_type="application/json"
    )


@web.middleware
async def access_and_errors(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Log one line per request and turn HTTP errors into JSON bodies."""
    started = time.perf_counter()
    request[REQUEST_ID] = uuid.uuid4().hex[:12]
    try:
        response = await handler(request)
    except web.HTTPException as err:
        text = err.text if err.text and not err.text.startswith("<") else err.reason
        body: dict[str, Any] = {"error": text}
        if request.path == "/query":
            # Whatever reaches /query may be MISP, which reads "results".
            body["results"] = []
        response = json_response(body, status=err.status)
    if request.path == "/query":
        _count_query(request, time.perf_counter() - started)
    access_log.info(
        "%s %s %s %s %d %.1fms",
        request[REQUEST_ID],
        request.method,
        request.path,
        loggable(request.get(MODULE)),
        response.status,
        (time.perf_counter() - started) * 1000,
        extra={"outcome": request.get(OUTCOME, "-")},
    )
    return response


def _count_query(request: web.Request, seconds: float) -> None:
    """Count a query in the metrics, under a module this server has."""
    enricher = request.app[ENRICHER]
    module = request.get(MODULE, "-")
    if module not in enricher.registry.modules:
        module = "-"
    enricher.engine.metrics.query(module, request.get(OUTCOME, "-"), seconds)


async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[ENRICHER].engine.metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def get_modules(request: web.Request) -> web.Response:
    return web.Response(body=request.app[MODULES_BODY], content_type="application/json")


async def get_healthcheck(request: web.Request) -> web.Response:
    return json_response({"status": True})


async def get_version(request: web.Request) -> web.Response:
    return json_response({"version": __version__, "name": "misp-enrich"})


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_BODY], content_type="application/json")


async def post_query(request: web.Request) -> web.Response:
    """Answer one MISP query; errors MISP could cause are 200 with an error."""
    enricher = request.app[ENRICHER]
    limit = enricher.settings.max_body
    if request.content_length is not None and request.content_length > limit:
        return _too_large(request, limit)
    try:
        # MISP sends its body at once; one that trickles would hold a
        # connection and its memory for ever.
        async with asyncio.timeout(enricher.settings.deadline):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(request, limit)
    except ConnectionError:
        # The client went away mid-body: nobody is left to answer.
        request[OUTCOME] = "client_gone"
        raise asyncio.CancelledError from None
    except TimeoutError:
        request[OUTCOME] = "slow_body"
        response = json_response(
            {
                "error": "the body did not arrive within "
                f"{enricher.settings.deadline:g} s; send it at once",
                "results": [],
            },
            status=408,
        )
        response.force_close()
        return response
    except RequestPayloadError as err:
        # A body that does not decompress or ends early: MISP never sends one.
        request[OUTCOME] = "bad_body"
        reason = str(err).replace("\n", " ").split(", message: ")[-1].strip()
        response = json_response(
            {"error": f"the body could not be read ({reason})", "results": []},
            status=400,
        )
        # The rest of such a body cannot be read either: mark it ended, so
        # the server closes after the answer instead of draining it.
        response.force_close()
        request.content.feed_eof()
        return response
    if len(raw) > LARGE_BODY and raw.count(b"{") + raw.count(b"[") > MAX_CONTAINERS:
        # A big body is an attachment: one long string. Millions of small
        # objects would take gigabytes and seconds to decode.
        request[OUTCOME] = "bad_body"
        return json_response(
            error_body(
                BadRequest(
                    f"the body holds more than {MAX_CONTAINERS} JSON objects and "
                    "lists; a MISP query holds one attribute or object"
                )
            )
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        request[OUTCOME] = "bad_json"
        return json_response(
            {"error": f"the body is not valid JSON ({err})", "results": []},
            status=400,
        )

    try:
        if isinstance(body, dict) and isinstance(body.get("module"), str):
            # Name an unknown module first: no attribute makes it known.
            request[MODULE] = body["module"]
            enricher.module(body["module"])
        query = parse_query(body)
        request[MODULE] = query.module
        response = web.Response(
            body=await enricher.answer(query), content_type="application/json"
        )
    except EnrichError as err:
        request[OUTCOME] = err.outcome
        # The message may quote the indicator: analysts' data stays out of
        # the log unless debugging asks for it.
        log.info(
            "query %s for %s failed: %s",
            request[REQUEST_ID],
            loggable(request.get(MODULE)),
            err.outcome,
        )
        log.debug("query %s failed: %s", request[REQUEST_ID], loggable(str(err), 500))
        return json_response(error_body(err))
    except Exception as err:
        request[OUTCOME] = "internal_error"
        log.exception(
            "query %s for %s crashed",
            request[REQUEST_ID],
            loggable(request.get(MODULE)),
        )
        return json_response(error_body(err))
    request[OUTCOME] = "ok"
    return response


def _too_large(request: web.Request, limit: int) -> web.Response:
    request[OUTCOME] = "too_large"
    error = BadRequest(
        f"the request body is larger than the {limit} byte limit; raise "
        "MISP_ENRICH_MAX_BODY to accept bigger attachments"
    )
    return json_response(error_body(error))


def create_app(
    registry: Registry, settings: ServerSettings, enricher: QueryRunner | None = None
) -> web.Application:
    """Build the aiohttp application for a registry of modules."""
    app = web.Application(
        middlewares=[access_and_errors], client_max_size=settings.max_body
    )
    app[ENRICHER] = enricher or Enricher(registry, settings)
    app[MODULES_BODY] = modules_body(registry)
    app[OPENAPI_BODY] = orjson.dumps(openapi_document(registry))
    app.router.add_get("/modules", get_modules)
    app.router.add_post("/query", post_query)
    app.router.add_get("/healthcheck", get_healthcheck)
    app.router.add_get("/version", get_version)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_get("/metrics", get_metrics)

    async def start_engine(app: web.Application) -> None:
        await app[ENRICHER].start()

    app.on_startup.append(start_engine)

    async def close_enricher(app: web.Application) -> None:
        await app[ENRICHER].close()

    app.on_cleanup.append(close_enricher)
    return app
