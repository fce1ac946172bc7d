"""``${VAR}`` interpolation over a raw config tree: the second step of loading.

It exists apart from the models because it works on the raw YAML tree, before anything is typed,
and has a grammar of its own (POSIX parameter expansion, restricted) that the error messages
quote (``GRAMMAR``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from iris.errors import ConfigError

GRAMMAR = ("${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, "
           "or $$ for a literal $")
_EXPANSION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, path: str, env: Mapping[str, str]) -> Any:
    """Expand ``${...}`` in every string value of a raw YAML tree (never in keys).

    The grammar is POSIX's parameter expansion, restricted to what a config needs:

    - ``$$`` is one literal ``$``; a ``$`` followed by anything but ``{`` or ``$`` is literal;
    - ``${NAME}``: the variable; an error if it is not set (set but empty gives "");
    - ``${NAME:-default}``: ``default`` when unset or empty; ``${NAME-default}``: only when unset;
    - ``${NAME:?message}``: an error saying ``message`` when unset or empty; ``${NAME?message}``:
      only when unset;
    - anything else after ``${`` (``${NAME:+x}``, a nested ``${``, no ``}``) is an error, never
      sent as written. Defaults and messages are literal text up to the first ``}``.

    One pass: a variable's value, and the content of a ``*_file`` secret, are never expanded.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, join_path(path, str(k)), env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    return _expand(value, path, env)


def join_path(path: str, key: str) -> str:
    """The key path of ``key`` inside ``path`` (``a.b``), as error messages name it."""
    return f"{path}.{key}" if path else key


def _expand(text: str, path: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    at = 0
    while (dollar := text.find("$", at)) >= 0:
        out.append(text[at:dollar])
        follower = text[dollar + 1:dollar + 2]
        if follower == "{":
            match = _EXPANSION.match(text, dollar + 2)
            if match is None or "${" in (match.group(3) or ""):
                # the value itself may be a secret: say where, never what
                raise ConfigError(path, f"cannot read the ${{...}} at character {dollar + 1}: "
                                        f"write {GRAMMAR}")
            out.append(_resolve(match, path, env))
            at = match.end()
        else:
            out.append("$")
            at = dollar + (2 if follower == "$" else 1)
    out.append(text[at:])
    return "".join(out)


def _resolve(match: re.Match[str], path: str, env: Mapping[str, str]) -> str:
    name, operator, word = match.groups()
    found = env.get(name)
    if operator is None:
        if found is None:
            raise ConfigError(path, f"environment variable {name} is not set")
        return found
    if found is not None and (found or not operator.startswith(":")):
        return found
    if operator.endswith("-"):
        return word
    state = "not set" if found is None else "empty"
    raise ConfigError(path, f"{word} (environment variable {name} is {state})" if word
                      else f"environment variable {name} is {state}")
