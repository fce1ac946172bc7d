"""The template language of customised token requests (seed 003's ``accessTokenRequest``).

Seed 003 writes these templates in Pebble; iris reads the same syntax with Jinja2, in a sandbox
(a template from a config file must not reach Python internals), with Pebble's helpers:
``formUrlEncode(k1, v1, k2, v2, ...)``, the ``raw`` filter and the ``is empty`` test. Nothing is
HTML-escaped: these templates build URLs, headers and bodies, not pages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import ChainableUndefined, StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment


def form_url_encode(*pairs: Any) -> str:
    """``formUrlEncode('grant_type', 'client_credentials', 'client_id', id)`` → a form body.

    Spaces become ``%20``: decoders that read ``+`` literally (Authlib) and RFC 6749 Appendix B
    decoders both read that as a space.
    """
    if len(pairs) % 2:
        raise TemplateError("formUrlEncode needs name/value pairs: got an odd number of arguments")
    items = [(str(pairs[i]), _text(pairs[i + 1])) for i in range(0, len(pairs), 2)]
    return urlencode(items, quote_via=_quote)


def _quote(value: str, safe: str = "", encoding: str | None = None,
           errors: str | None = None) -> str:
    return quote(value, safe="", encoding=encoding, errors=errors)  # '/' and '+' encoded too


def _text(value: Any) -> str:
    if value is None or isinstance(value, Undefined):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_empty(value: Any) -> bool:
    """Pebble's ``empty``: missing, null, or an empty string, list or mapping."""
    if value is None or isinstance(value, Undefined):
        return True
    if isinstance(value, str | list | tuple | Mapping):
        return len(value) == 0
    return False


def _environment(undefined: type[Undefined]) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(autoescape=False, undefined=undefined,
                                        keep_trailing_newline=True)
    env.globals["formUrlEncode"] = form_url_encode
    env.filters["raw"] = lambda value: value
    env.tests["empty"] = is_empty
    env.finalize = _finalize
    return env


def _finalize(value: Any) -> Any:
    """Render booleans the way Pebble (and partners' expected values) write them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


# Requests: a typo in a name (authData.clientld) must be an error, not an empty string.
REQUEST_TEMPLATES = _environment(StrictUndefined)
# Responses: a field the partner left out reads as empty, for validations and defaults to judge.
RESPONSE_TEMPLATES = _environment(ChainableUndefined)


def check_template(source: str) -> None:
    """Raise ``ValueError`` naming the syntax problem; used when the config is loaded."""
    try:
        REQUEST_TEMPLATES.parse(source)
    except TemplateError as exc:
        raise ValueError(f"template syntax error: {exc}") from None
