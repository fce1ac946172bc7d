"""One process of the benchmark's partner: a cheap keep-alive HTTP endpoint that counts, served
by ``benchmarks/partner_http.py``.

Served by every partner process on the same port (``SO_REUSEPORT``: the kernel spreads the
connections over them), per destination ``<id>``:

- ``POST /oauth2/<id>/token``: an OAuth 2 client-credentials token endpoint (RFC 6749 §4.4:
  POST, a form body with ``grant_type=client_credentials``, the client authenticated with HTTP
  Basic, form-encoded per §2.3.1). Its tokens are signed (HMAC with a key the processes share),
  so a token that one process issued is valid in every other, with no state to share;
- ``POST /segments/<id>``: checks ``Authorization: Bearer <token>`` for that destination,
  parses the standard payload with orjson, and counts requests, users, segment changes and
  distinct users (so duplicates are visible).

When latency recording is on, the first 16 digits of each AAM_UUID are read as the producer's
XADD time in epoch microseconds, and ``time.time()`` at receipt minus that is recorded once per
segment change. The parent process (``benchmarks/partner.py``) resets and reads the counters
through a pipe.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from array import array
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import orjson

from benchmarks.iris_api import basic_credentials
from benchmarks.partner_http import Reply, Request

TOKEN_TTL = 3600
OK = Reply(200)
FORM_TYPE = "application/x-www-form-urlencoded"


class Counters:
    """What one process received in one phase."""

    def __init__(self, destinations: list[str], latency: bool) -> None:
        self.latency = latency
        self.per_dest = {d: {"requests": 0, "users": 0, "changes": 0} for d in destinations}
        self.requests = 0
        self.users = 0
        self.changes = 0
        self.seen: set[str] = set()
        self.first: float | None = None
        self.last: float | None = None
        self.unauthorized = 0
        self.bad = 0
        self.latencies = array("d")
        self.xadd_times = array("d")  # parallel to latencies

    def report(self, *, full: bool, latency: bool) -> dict[str, Any]:
        """The counts; with ``full`` the distinct users themselves, with ``latency`` the samples."""
        out: dict[str, Any] = {
            "requests": self.requests, "users": self.users, "changes": self.changes,
            "unique_users": len(self.seen), "first_receipt": self.first,
            "last_receipt": self.last, "unauthorized": self.unauthorized,
            "bad_payloads": self.bad, "per_destination": self.per_dest,
        }
        if full:
            out["seen"] = self.seen
        if latency and self.latency:
            out["latencies"], out["xadd_times"] = self.latencies, self.xadd_times
        return out


class Tokens:
    """Signed bearer tokens: ``<dest>.<expiry>.<hmac>``, checked without any shared state."""

    def __init__(self, key: bytes, clients: dict[str, dict[str, str]]) -> None:
        self.key = key
        self.clients = clients  # dest -> {"client_id": ..., "client_secret": ...}
        self.ok_requests = dict.fromkeys(clients, 0)
        self._valid: dict[str, float] = {}  # token -> expiry, once checked

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()[:40]

    def issue(self, dest: str) -> str:
        text = f"{dest}.{int(time.time()) + TOKEN_TTL}"
        return f"{text}.{self._sign(text)}"

    def is_valid(self, dest: str, token: str) -> bool:
        expiry = self._valid.get(token)
        if expiry is None:
            text, _, sig = token.rpartition(".")
            token_dest, _, when = text.partition(".")
            if token_dest != dest or not when.isdigit():
                return False
            if not hmac.compare_digest(sig, self._sign(text)):
                return False
            expiry = self._valid[token] = float(when)
        return time.time() < expiry

    def handle(self, request: Request, dest: str) -> Reply:
        client = self.clients.get(dest)
        if client is None:
            return Reply(404, b"no such destination")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != FORM_TYPE:
            return _oauth_error(400, "invalid_request", f"Content-Type must be {FORM_TYPE}")
        creds = _basic(request.headers.get("authorization"))
        if creds is None or not (hmac.compare_digest(creds[0], client["client_id"])
                                 & hmac.compare_digest(creds[1], client["client_secret"])):
            return _oauth_error(401, "invalid_client", "client authentication failed")
        form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "only client_credentials")
        self.ok_requests[dest] += 1
        body = {"token_type": "Bearer", "access_token": self.issue(dest),
                "expires_in": TOKEN_TTL}
        return Reply(200, orjson.dumps(body), {"Content-Type": "application/json",
                                               "Cache-Control": "no-store"})


def _basic(header: str | None) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1: Basic, base64 of ``id:secret``, each side form-encoded."""
    creds = basic_credentials(header)
    return None if creds is None else (unquote_plus(creds[0]), unquote_plus(creds[1]))


def _oauth_error(status: int, error: str, description: str) -> Reply:
    headers = {"Content-Type": "application/json"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="token"'
    return Reply(status, json.dumps({"error": error, "error_description": description}).encode(),
                 headers)


class PartnerApp:
    """The HTTP side of one partner process."""

    def __init__(self, key: bytes, clients: dict[str, dict[str, str]]) -> None:
        self.tokens = Tokens(key, clients)
        self.destinations = list(clients)
        self.counters = Counters(self.destinations, latency=False)

    def handle(self, request: Request) -> Reply:
        """``POST /segments/<id>`` and ``POST /oauth2/<id>/token``."""
        parts = request.path.split("/")
        if len(parts) == 3 and parts[1] == "segments":
            route = self.segments
        elif len(parts) == 4 and parts[1] == "oauth2" and parts[3] == "token":
            route = self.tokens.handle
        else:
            return Reply(404, b"not found")
        if request.method != "POST":
            return Reply(405, b"POST only", {"Allow": "POST"})
        return route(request, parts[2])

    def reset(self, latency: bool) -> None:
        self.counters = Counters(self.destinations, latency=latency)

    def report(self, *, full: bool, latency: bool) -> dict[str, Any]:
        out = self.counters.report(full=full, latency=latency)
        out["token_requests"] = dict(self.tokens.ok_requests)
        return out

    def segments(self, request: Request, dest: str) -> Reply:
        c = self.counters
        now = time.time()
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not self.tokens.is_valid(dest, auth[7:]):
            c.unauthorized += 1
            return Reply(401, b"", {"WWW-Authenticate": "Bearer"})
        try:
            payload = orjson.loads(request.body)
            users = payload["Users"]
            if payload["AAM_Destination_Id"] != dest or payload["User_count"] != str(len(users)):
                raise ValueError("envelope does not match")
            changes = 0
            seen = c.seen
            for user in users:
                n = len(user["Segments"])
                changes += n
                uuid = user["AAM_UUID"]
                seen.add(uuid)
                if c.latency:
                    sent = int(uuid[:16]) / 1e6
                    for _ in range(n):
                        c.latencies.append(now - sent)
                        c.xadd_times.append(sent)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            c.bad += 1
            return Reply(400, b"bad payload")
        c.requests += 1
        c.users += len(users)
        c.changes += changes
        per = c.per_dest[dest]
        per["requests"] += 1
        per["users"] += len(users)
        per["changes"] += changes
        if c.first is None:
            c.first = now
        c.last = now
        return OK
