"""Form encoding (application/x-www-form-urlencoded) as token endpoints read it.

Spaces become ``%20`` and every reserved character is escaped: decoders that read ``+``
literally (Authlib) and RFC 6749 Appendix B decoders both read the result the same way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote


def form_url_encode(*pairs: Any) -> str:
    """``form_url_encode('grant_type', 'client_credentials', 'client_id', id)`` → a form body."""
    if len(pairs) % 2:
        raise ValueError("formUrlEncode needs name/value pairs: got an odd number of arguments")
    return "&".join(f"{quote(str(pairs[i]), safe='')}={quote(_text(pairs[i + 1]), safe='')}"
                    for i in range(0, len(pairs), 2))  # '/' and '+' encoded too


def _text(value: Any) -> str:
    """A value as form text: None is empty, booleans as Pebble writes them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
