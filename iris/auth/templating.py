"""The template language of customised token requests (seed 003's ``accessTokenRequest``).

Seed 003 writes these templates in Pebble; iris reads the same syntax with Jinja2, in a sandbox
(a template from a config file must not reach Python internals), with Pebble's helpers:
``formUrlEncode(k1, v1, k2, v2, ...)``, the ``raw`` filter and the ``is empty`` test. Nothing is
HTML-escaped: these templates build URLs, headers and bodies, not pages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from iris.auth.forms import form_url_encode


def _form_url_encode(*pairs: Any) -> str:
    """``formUrlEncode`` in templates: a missing value is empty, a mistake a template error."""
    try:
        return form_url_encode(*(None if isinstance(p, Undefined) else p for p in pairs))
    except ValueError as exc:
        raise TemplateError(str(exc)) from None


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
    env.globals["formUrlEncode"] = _form_url_encode
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
