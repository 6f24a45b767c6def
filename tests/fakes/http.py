"""A fake HTTP upstream on 127.0.0.1 that serves canned JSON and records calls."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Recorded:
    """One request the fake upstream received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    url: str
    body: bytes


@dataclass
class Reply:
    """What the fake upstream answers for a route."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeUpstream:
    """Serve `routes` ({"GET /path": Reply | JSON}) and record every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply | list[Reply]] = {}
        self.requests: list[Recorded] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    def add(self, method_path: str, reply: Reply | Any) -> None:
        """Answer `METHOD /path` with a Reply (or a JSON body with status 200)."""
        self.routes[method_path] = (
            reply if isinstance(reply, Reply | list) else Reply(body=reply)
        )

    def sequence(self, method_path: str, replies: list[Reply]) -> None:
        """Answer `METHOD /path` with each reply in turn, then the last one again."""
        self.routes[method_path] = list(replies)

    def calls(self, path: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if path is None or r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                str(request.rel_url),
                body,
            )
        )
        reply = self.routes.get(f"{request.method} {request.path}")
        if isinstance(reply, list):
            reply = reply.pop(0) if len(reply) > 1 else reply[0]
        if reply is None:
            reply = Reply(
                404, {"error": {"code": "NotFoundError", "message": "no route"}}
            )
        if reply.delay:
            await asyncio.sleep(reply.delay)
        payload = reply.raw if reply.raw is not None else orjson.dumps(reply.body)
        return web.Response(
            status=reply.status,
            body=payload,
            headers=reply.headers,
            content_type="application/json",
        )

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
