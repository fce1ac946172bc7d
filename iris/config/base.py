"""Building blocks of every configuration model: strictness, ids as text, and secrets from
mounted files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- ids as text

class LiteralInt(int):
    """A YAML integer that remembers how it was written, so that an unquoted id keeps exactly
    the digits the operator typed (``0423`` is not the octal 275, nor ``423``)."""

    literal: str

    def __new__(cls, value: int, literal: str | None = None) -> LiteralInt:
        obj = super().__new__(cls, value)
        obj.literal = str(value) if literal is None else literal
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (LiteralInt, (int(self), self.literal))


_DIGITS = re.compile(r"[0-9]+")
QUOTE_IT = "must be a string: quote it"


def id_text(value: Any) -> Any:
    """An id (destination, User_DPID, Client_ID, segment, client_id) is text. An unquoted YAML
    integer written as plain digits is taken as those digits; anything YAML turned into another
    number or a boolean would not be the id that was meant, so it must be quoted."""
    if isinstance(value, bool):
        raise ValueError(f"{QUOTE_IT} (YAML read it as the boolean {str(value).lower()})")
    if isinstance(value, int):
        literal = getattr(value, "literal", str(value))
        if _DIGITS.fullmatch(literal):
            return literal
        raise ValueError(f"{QUOTE_IT} (YAML read {literal} as the number {int(value)})")
    if isinstance(value, float):
        raise ValueError(f"{QUOTE_IT} (YAML read it as the number {value!r})")
    return value


IdText = Annotated[str, BeforeValidator(id_text)]


# --------------------------------------------------------------------------- secret files

class SecretsFromFiles(Strict):
    """Every ``SecretStr`` field ``x`` may instead be given as ``x_file`` (a mounted secret)."""

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, field in cls.model_fields.items():
            key = f"{name}_file"
            if key not in data or field.annotation not in (SecretStr, SecretStr | None):
                continue
            if name in data:
                raise ValueError(f"{key}: give either {name} or {key}, not both")
            data[name] = read_secret_file(key, data.pop(key))
        return data


def read_utf8(path: Path) -> str:
    """A text file's content, without a UTF-8 byte order mark; ``ValueError`` naming the first
    byte that is not UTF-8, or why the file cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start})") from None
    return text.removeprefix("\ufeff")


def read_secret_file(key: str, path: Any) -> str:
    """The secret exactly as the file holds it, less what editors and ``echo`` add: trailing
    newlines (LF or CR LF) and a UTF-8 byte order mark. Never interpolated. An empty file is
    refused: it is a mount that went wrong, not a secret."""
    try:
        text = read_utf8(Path(str(path))).rstrip("\r\n")
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if not text.strip():
        raise ValueError(f"{key}: {path} is empty")
    return text
