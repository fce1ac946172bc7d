"""Building blocks of every configuration model: strictness, and secrets from mounted files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
            data[name] = _read_secret_file(key, data.pop(key))
        return data


def _read_secret_file(key: str, path: Any) -> str:
    try:
        return Path(str(path)).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {path}: {exc.strerror}") from None
