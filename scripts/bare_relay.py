"""The floor for any Python proxy: read the body, POST it upstream on one pooled session, return.

``scripts/bench_core.py`` runs this in its own process and subtracts a direct call
from it, so kallm's overhead can be judged against the least an aiohttp relay
must spend (one server parse + one client round trip), not against zero.

    python scripts/bare_relay.py --upstream http://127.0.0.1:PORT/v1 --port 0
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.Response:
    """Forward the body and the client's key; hand back the upstream's status and body."""
    body = await request.read()
    headers = {
        "Content-Type": "application/json",
        "Authorization": request.headers.get("Authorization", ""),
    }
    url = request.app[UPSTREAM] + "/" + request.match_info["tail"]
    async with request.app[SESSION].post(url, data=body, headers=headers) as upstream:
        data = await upstream.read()
    return web.Response(body=data, status=upstream.status, content_type="application/json")


async def serve(upstream: str, host: str, port: int) -> None:
    """Same pool settings as kallm's upstream client, so only the handler's work differs."""
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.router.add_post("/v1/{tail:.*}", relay)
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    await serve_until_cancelled(app, host, port, app[SESSION])


async def serve_until_cancelled(
    app: web.Application, host: str, port: int, session: aiohttp.ClientSession
) -> None:
    """Listen, print the base URL (what ``kallm.bench.procs`` waits for), serve until
    cancelled, then close the upstream session and the app."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"http://{host}:{runner.addresses[0][1]}/v1", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        await runner.cleanup()


def arguments(description: str) -> argparse.Namespace:
    """--upstream, --host, --port: the command line of every relay the benchmarks start."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--upstream", required=True, help="base URL ending in /v1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS pick")
    return parser.parse_args()


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    asyncio.run(serve(args.upstream, args.host, args.port))
