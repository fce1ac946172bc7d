"""Logging set-up, with redaction that no call site can bypass.

Every secret iris learns (configured secrets, tokens as they arrive) is registered here; a filter
on the root handler rewrites any record that contains one before it is formatted.
"""

from __future__ import annotations

import logging
import sys
import threading

_MASK = "[REDACTED]"
_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line, an exception text or a dead-letter entry."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


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


def setup_logging(level: str = "INFO") -> None:
    """Plain text lines on stderr; every handler passes through the redacting filter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
