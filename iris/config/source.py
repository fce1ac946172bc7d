"""The YAML source of a config: the first step of loading.

It exists apart from the models because PyYAML's safe loader silently changes what an operator
wrote in two ways that a config cannot afford, and this loader undoes both: a repeated key is
refused (PyYAML keeps the last one), and an integer remembers its text (``LiteralInt``), so that
an unquoted id keeps its digits. Every problem comes out as one ``ConfigError`` naming the file
and the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from iris.config.base import LiteralInt, read_utf8
from iris.errors import ConfigError


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping that repeats a key: YAML forbids it, and PyYAML would keep the last one."""

    def __init__(self, key: Any, first_line: int, mark: yaml.Mark) -> None:
        self.key = key
        self.first_line = first_line
        super().__init__(None, None, f"duplicate key {key!r}", mark)


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, less two ways it silently changes what the operator wrote: a
    repeated key is refused instead of replacing the first, and an integer remembers its text
    (``LiteralInt``), so an unquoted id keeps its digits."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults" may be overridden by the keys beside it
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first:
                    raise DuplicateKey(key, first[key], key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: the base constructor refuses it
        return super().construct_mapping(node, deep=deep)

    def construct_literal_int(self, node: yaml.ScalarNode) -> LiteralInt:
        return LiteralInt(self.construct_yaml_int(node), node.value)


ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_literal_int)


def read_yaml(path: str | Path) -> Any:
    """The raw tree of the YAML file at ``path``; every problem is one line naming the file."""
    try:
        text = read_utf8(Path(path))
    except ValueError as exc:
        raise ConfigError("", str(exc)) from None
    try:
        return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader
    except DuplicateKey as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError("", f"{path}:{line}: duplicate key {exc.key!r} (first at line "
                              f"{exc.first_line}); YAML keeps only one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{path} is not valid YAML{where}") from None
