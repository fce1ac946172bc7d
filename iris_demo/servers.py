"""Run an aiohttp application on loopback, plain or TLS, on a chosen or ephemeral port."""

from __future__ import annotations

import ssl

from aiohttp import web


class LocalServer:
    """One aiohttp app bound to 127.0.0.1; access logging is off so no header ever reaches logs."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.url: str | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    async def start(
        self, app: web.Application, *, ssl_context: ssl.SSLContext | None = None, port: int = 0
    ) -> str:
        """Serve ``app`` and return its base URL (``https://127.0.0.1:PORT`` with TLS)."""
        if self._runner is not None:
            raise RuntimeError("server already started")
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = _bound_port(runner)
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._port}"
        return self.url

    async def stop(self) -> None:
        """Close listeners and connections. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> LocalServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _bound_port(runner: web.AppRunner) -> int:
    """The real port when 0 was asked for."""
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    raise RuntimeError("could not determine the bound port")
