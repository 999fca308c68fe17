"""``tessera serve``: run the HTTP server until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from server import logs
from server.app import create_app
from server.settings import Settings

log = logging.getLogger("tessera")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(settings: Settings) -> int:
    logs.configure()
    _install_uvloop()
    app = create_app(settings)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout,
        print=lambda message: log.info("listening", extra={"host": settings.host, "port": settings.port}),
        handle_signals=True,
    )
    return 0
