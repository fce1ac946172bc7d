"""Logging set-up, with redaction that no call site can bypass.

Every secret iris learns (configured secrets, tokens as they arrive) is registered here; a filter
on the root handler rewrites any record that contains one before it is formatted.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from urllib.parse import urlsplit

import orjson

_MASK = "[REDACTED]"
_lock = threading.Lock()
_secrets: set[str] = set()
ROTATING_KEPT = 256  # tokens rotate forever: remember the latest ones, not every one
_rotating: deque[str] = deque()


def register_secret(value: str | None, *, rotating: bool = False) -> None:
    """Never let ``value`` reach a log line, an exception text or a dead-letter entry.

    ``rotating`` secrets (access tokens, refresh tokens, assertions) are replaced all the time;
    only the latest ``ROTATING_KEPT`` are kept, so memory and redaction cost stay bounded.
    """
    if not value or len(value) < 4:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        if rotating:
            _rotating.append(value)
            if len(_rotating) > ROTATING_KEPT:
                _secrets.discard(_rotating.popleft())


def redact(text: str) -> str:
    """``text`` with every registered secret masked."""
    if not _secrets or not text:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def redact_cut(text: str) -> str:
    """``redact`` for text that was cut short: a secret's beginning at the very end is masked."""
    text = redact(text)
    for secret in _secrets:
        for size in range(len(secret) - 1, 3, -1):
            if text.endswith(secret[:size]):
                return text[:-size] + _MASK
    return text


class RedactingFilter(logging.Filter):
    """Formats the message early and masks secrets in it and in any exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


CONTEXT_FIELDS = ("destination", "batch_id", "attempt", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the delivery context a call site passed in ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                line[name] = value
        if record.exc_text:
            line["error"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Lines on stderr, text or JSON; every line passes through the redacting filter."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    logging.captureWarnings(True)  # warnings become log lines too, in the same format
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def without_secrets(url: str) -> str:
    """``url`` without user information, query or fragment: safe to log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path
