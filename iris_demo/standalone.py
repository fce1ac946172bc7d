"""The mock partner and its OAuth 2 token endpoint as a standalone plain-http server.

For the compose stack (deploy/docker-compose.yml), where iris reaches the partner by service
name inside a private network::

    python -m iris_demo.standalone --listen 0.0.0.0:8080 --client-id ID --client-secret-env VAR

Serves ``POST /segments/aam`` (the strict partner of iris_demo/partner.py, bearer tokens
required), ``POST /oauth2/token`` (client credentials, iris_demo/token_server.py) and
``GET /healthz``. Prints one line per received batch; SIGTERM or SIGINT stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from aiohttp import web

from iris_demo.partner import PartnerServer, ReceivedBatch
from iris_demo.token_server import TokenServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m iris_demo.standalone", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="0.0.0.0:8080", help="HOST:PORT (default 0.0.0.0:8080)")
    p.add_argument("--client-id", required=True, help="the OAuth 2 client id iris must present")
    p.add_argument("--client-secret-env", required=True, metavar="VAR",
                   help="environment variable holding the OAuth 2 client secret")
    p.add_argument("--destination", default="423", help="AAM_Destination_Id expected (423)")
    p.add_argument("--user-dpid", default="12345", help="User_DPID expected (12345)")
    p.add_argument("--payload-client-id", default="74323", help="Client_ID expected (74323)")
    p.add_argument("--token-ttl", type=float, default=300, help="token lifetime, s (300)")
    return p.parse_args(argv)


def show(batch: ReceivedBatch) -> None:
    doc = batch.payload
    changes = sum(len(u["Segments"]) for u in doc["Users"])
    print(f"partner {doc['AAM_Destination_Id']}: batch of {doc['User_count']} users, "
          f"{changes} segment changes, idempotency key {batch.idempotency_key}", flush=True)


def build_app(args: argparse.Namespace, secret: str) -> web.Application:
    tokens = TokenServer(client_id=args.client_id, client_secret=secret, ttl=args.token_ttl)
    partner = PartnerServer(destination_id=args.destination, user_dpid=args.user_dpid,
                            client_id=args.payload_client_id, tokens=tokens, on_batch=show)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "batches": len(partner.received)})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([*tokens.routes(), *partner.routes(), web.get("/healthz", healthz)])
    return app


async def serve(args: argparse.Namespace, secret: str) -> None:
    host, _, port = args.listen.rpartition(":")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_app(args, secret), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]") or "0.0.0.0", int(port)).start()
        print(f"mock partner: listening on http://{args.listen} (POST /segments/aam, "
              f"POST /oauth2/token, GET /healthz)", flush=True)
        await stop.wait()
        print("mock partner: stopping", flush=True)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secret = os.environ.get(args.client_secret_env)
    if not secret:
        print(f"mock partner: environment variable {args.client_secret_env} is not set",
              file=sys.stderr)
        return 2
    asyncio.run(serve(args, secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
