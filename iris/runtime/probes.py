"""The small HTTP server on ``http.listen``: /metrics, /healthz, /readyz."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from iris.errors import IrisError
from iris.runtime.health import Health
from iris.runtime.metrics import Metrics


class HttpServer:
    def __init__(
        self, host: str, port: int, metrics: Metrics, health: Health,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._metrics = metrics
        self._health = health
        self._before_scrape = before_scrape
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        self.port = port
        self.name = "probes"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise IrisError(
                f"http.listen: cannot listen on {self._host}:{self._port}: {exc.strerror}"
            ) from None
        if self._port == 0:  # an ephemeral port (tests, demo): find out which
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self, deadline: float | None = None) -> None:
        """Close the server (``deadline`` unused: it answers no long requests)."""
        await self._runner.cleanup()

    async def _metrics_page(self, request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            await self._before_scrape()
        return web.Response(body=self._metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        alive, age = self._health.liveness()
        return web.json_response({"status": "ok" if alive else "stuck",
                                  "heartbeat_age_seconds": round(age, 3)},
                                 status=200 if alive else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reasons = self._health.readiness()
        return web.json_response(
            {"ready": ready, "reasons": reasons,
             "paused_destinations": self._health.paused_destinations()},
            status=200 if ready else 503,
        )
