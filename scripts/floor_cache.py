"""The floor for any semantic cache in Python: the bare relay plus only the work a cache
cannot skip, with kallm's own embedder and index.

``scripts/bare_relay.py`` is the floor for a proxy; this is the floor for a caching one.
Per request it reads the body and parses its JSON (a cache must know the prompt), looks
the exact body up in a dict (answered at once when found: the exact-hit floor), else
embeds the last message with kallm's static embedder, searches kallm's ``VectorIndex``,
relays on one pooled session, answers, and only then parses the answer and stores it
(dict and index). No keys, limits, log rows, metrics, journal, guard, scopes, retries or
streams: whatever kallm measures beyond this server is the price of those.

``scripts/bench_wrk.py`` runs it beside the bare relay and kallm, so its figures answer
"how far is kallm from what its job costs in Python", not only "from a relay".

    python scripts/floor_cache.py --upstream http://127.0.0.1:PORT/v1 --port 0
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # kallm, and the bare relay beside this file

from bare_relay import arguments, serve_until_cancelled  # noqa: E402

from kallm.cache.index import VectorIndex  # noqa: E402
from kallm.embed.static import StaticEmbedder  # noqa: E402
from kallm.server.run import run_loop  # noqa: E402

SIMILAR = 0.95  # kallm's default threshold; the bench's prompts never reach it


class FloorCache:
    """Exact answers by body hash, vectors in kallm's index; nothing ever expires."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.embedder = StaticEmbedder()
        self.embedder.load()
        self.index = VectorIndex(self.embedder.dim)
        self.exact: dict[bytes, bytes] = {}
        self.answers: dict[int, bytes] = {}
        self.ids = itertools.count()
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key = hashlib.sha256(body).digest()
        stored = self.exact.get(key)
        if stored is not None:
            return _json(stored, "HIT")
        prompt = json.loads(body)["messages"][-1]["content"]
        vector = self.embedder.encode(prompt)
        for entry_id, _ in self.index.nearest(vector, 1, SIMILAR):
            return _json(self.answers[entry_id], "HIT")
        assert self.session is not None
        headers = {
            "Content-Type": "application/json",
            "Authorization": request.headers.get("Authorization", ""),
        }
        url = self.upstream + "/" + request.match_info["tail"]
        async with self.session.post(url, data=body, headers=headers) as upstream:
            data = await upstream.read()
        response = _json(data, "MISS", upstream.status)
        await response.prepare(request)
        await response.write_eof()
        if upstream.status == 200 and json.loads(data).get("choices"):  # a cache reads it
            entry_id = next(self.ids)
            self.exact[key] = self.answers[entry_id] = data
            self.index.add(entry_id, vector)
        return response


def _json(body: bytes, cache: str, status: int = 200) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers={"X-Kallm-Cache": cache},
    )


async def serve(upstream: str, host: str, port: int) -> None:
    """The bare relay's pool settings and serving, so only the handler's work differs."""
    cache = FloorCache(upstream)
    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", cache.handle)
    cache.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    await serve_until_cancelled(app, host, port, cache.session)


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    run_loop("auto", serve(args.upstream, args.host, args.port))  # kallm's loop: uvloop
