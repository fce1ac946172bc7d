"""The pydantic step of loading, and how its errors read: the third step of loading.

It exists apart from the models because turning pydantic's error records into messages an
operator can act on is its own piece of work: each error names the key path the operator wrote
(without the discriminator tags pydantic inserts) and says what to change in words, and all the
errors of one config are reported together (``ConfigErrors``).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from iris.config.auth import AUTH_TYPES
from iris.config.interpolation import interpolate, join_path
from iris.errors import ConfigError

_Model = TypeVar("_Model", bound=BaseModel)


class ConfigErrors(ConfigError):
    """Several configuration problems at once; each has its own line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__(errors[0].path, errors[0].message)

    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]


def validate(model: type[_Model], raw: Any, part: Any, env: Mapping[str, str] | None) -> _Model:
    """``part`` of the raw tree ``raw``, interpolated from ``env`` (default: the process's
    environment) and validated as ``model``; raise ``ConfigError`` or ``ConfigErrors``."""
    if not isinstance(raw, dict):
        raise ConfigError("", "the configuration must be a YAML mapping")
    resolved = interpolate(part, "", os.environ if env is None else env)
    try:
        return model.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigErrors([_format_error(e) for e in exc.errors()]) from None


def _loc_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif i > 0 and loc[i - 1] == "auth" and part in AUTH_TYPES:
            continue  # the discriminator tag pydantic inserts: not a key the user wrote
        else:
            path = join_path(path, str(part))
    return path


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "too_short": "must not be empty",
}


_UNQUOTED = (bool, int, float, datetime.date, datetime.time)  # what YAML makes of unquoted text


def _format_error(err: ErrorDetails) -> ConfigError:
    path = _loc_path(tuple(err["loc"]))
    template = _MESSAGES.get(err["type"])
    if err["type"] == "string_type" and isinstance(err.get("input"), _UNQUOTED):
        kind = type(err["input"]).__name__.replace("LiteralInt", "int")
        message = f"must be a string: quote it (YAML read it as {kind})"
    elif template:
        message = template.format(**err.get("ctx", {}))
    else:
        message = err["msg"].removeprefix("Value error, ")
        key, sep, rest = message.partition(": ")
        if sep and re.fullmatch(r"[a-z_][a-z0-9_.]*", key):  # raised for a key of the model
            path, message = join_path(path, key), rest
        if message[1:2].islower():  # "Field required" → "field required", not "RS256" → "rS256"
            message = message[:1].lower() + message[1:]
    return ConfigError(path, message)
