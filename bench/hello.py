"""The yardstick: the least an aiohttp server can do for a token request (parse a small form,
answer small JSON). Tessera's figures are shown as a share of this one, measured in the same run."""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web


async def token(request: web.Request) -> web.Response:
    form = await request.post()
    return web.json_response({"access_token": "x" * 400, "token_type": "Bearer", "grant": form.get("grant_type")})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app = web.Application()
    app.router.add_post("/token", token)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
