"""Form encoding (application/x-www-form-urlencoded) as token endpoints read it.

Spaces become ``%20`` and every reserved character is escaped: decoders that read ``+``
literally (Authlib) and RFC 6749 Appendix B decoders both read the result the same way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode


def form_url_encode(*pairs: Any) -> str:
    """``form_url_encode('grant_type', 'client_credentials', 'client_id', id)`` → a form body."""
    if len(pairs) % 2:
        raise ValueError("formUrlEncode needs name/value pairs: got an odd number of arguments")
    items = [(str(pairs[i]), _text(pairs[i + 1])) for i in range(0, len(pairs), 2)]
    return urlencode(items, quote_via=_quote)


def _quote(value: str, safe: str = "", encoding: str | None = None,
           errors: str | None = None) -> str:
    return quote(value, safe="", encoding=encoding, errors=errors)  # '/' and '+' encoded too


def _text(value: Any) -> str:
    """A value as form text: None is empty, booleans as Pebble writes them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
