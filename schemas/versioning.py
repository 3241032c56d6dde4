"""Versioned message contracts: the base every topic's message derives from.

A message carries ``schema_version`` as "MAJOR.MINOR". Consumers accept any minor version of
the major they know and unknown extra fields (forward compatible); an unknown major version is
rejected with a clear error, as is anything that fails validation.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, PlainSerializer, ValidationError, WithJsonSchema, field_validator
from pydantic.functional_validators import BeforeValidator

M = TypeVar("M", bound="VersionedMessage")


def _strict_b64decode(value: object) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


Base64Data = Annotated[
    bytes,
    BeforeValidator(_strict_b64decode),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]
"""Bytes carried as strict base64 text in JSON (bad padding or characters are rejected)."""


class MessageError(ValueError):
    """A message that cannot be accepted; ``reason`` is a short stable code for metrics and DLQ."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class VersionedMessage(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    TOPIC: ClassVar[str]
    MAJOR: ClassVar[int] = 1

    schema_version: str = "1.0"

    @field_validator("schema_version")
    @classmethod
    def _known_major(cls, value: str) -> str:
        major, _, minor = value.partition(".")
        if not major.isdigit() or (minor and not minor.isdigit()):
            raise ValueError(f"schema_version must look like '1.0', got {value!r}")
        if int(major) != cls.MAJOR:
            raise ValueError(
                f"unsupported major version {major} of {cls.TOPIC} (this consumer understands {cls.MAJOR}.x)"
            )
        return value

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls: type[M], raw: bytes | str | None) -> M:
        """Parse and validate; raises :class:`MessageError` naming the offending fields."""
        if raw is None or raw == b"" or raw == "":
            raise MessageError("empty", f"empty message where a {cls.TOPIC} message was expected")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MessageError("not_json", f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MessageError("not_object", f"expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise MessageError(_reason(exc), describe_validation_error(exc, cls.TOPIC)) from None


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    if first["loc"] and first["loc"][0] == "schema_version":
        return "unsupported_version"
    return "invalid_schema"


def describe_validation_error(exc: ValidationError, topic: str) -> str:
    parts = []
    for error in exc.errors()[:5]:
        field = ".".join(str(p) for p in error["loc"]) or "(message)"
        parts.append(f"{field}: {error['msg']}")
    return f"invalid {topic} message: " + "; ".join(parts)
