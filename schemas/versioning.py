"""Versioned message contracts: the base every topic's message derives from.

A message carries ``schema_version`` as "MAJOR.MINOR". Consumers accept any minor version of
the major they know and unknown extra fields (forward compatible); an unknown major version is
rejected with a clear error, as is anything that fails validation.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on an untrusted message, checked before the JSON parser runs."""

    max_message_bytes: int = 4_194_304
    max_depth: int = 32  # nesting of objects and arrays; the JSON parser and pydantic recurse


def nesting_exceeds(raw: bytes, data: object, limit: int) -> bool:
    """Whether arrays and objects in a parsed message nest deeper than ``limit``.

    Free for almost every message: fewer brackets in the bytes than the limit cannot nest
    deeper. Otherwise an iterative walk (no recursion) that stops at the first too-deep value.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    stack = [(data, 1)] if isinstance(data, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


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
    def from_bytes(cls: type[M], raw: bytes | str | None, limits: DecodeLimits | None = None) -> M:
        """Parse and validate; raises :class:`MessageError` (and nothing else) naming what is wrong.

        In order: size (``message_too_large``), UTF-8 (``not_utf8``), JSON (``not_json``), nesting
        depth (``too_deep``: the parser's own guard, then an iterative count before validation), an
        object (``not_object``), the contract (``unsupported_version``, ``invalid_schema`` or a more
        precise code of the message type), then the type's own limits (:meth:`check_limits`).
        """
        limits = limits or cls.default_limits()
        if raw is None or raw == b"" or raw == "":
            raise MessageError("empty", f"empty message where a {cls.TOPIC} message was expected")
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="surrogatepass")
        if len(raw) > limits.max_message_bytes:
            raise MessageError("message_too_large", f"{len(raw)} bytes, over the {limits.max_message_bytes}-byte "
                               f"limit of a {cls.TOPIC} message")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError("not_utf8", f"not UTF-8 text: {exc}") from None
        too_deep = MessageError("too_deep", f"JSON nested deeper than the limit of {limits.max_depth} levels")
        try:
            data = json.loads(text)
        except RecursionError:  # the parser's own guard, at about a thousand levels
            raise too_deep from None
        except ValueError as exc:  # JSONDecodeError, and an integer of over 4300 digits
            raise MessageError("not_json", f"not JSON: {str(exc)[:300]}") from None
        if nesting_exceeds(raw, data, limits.max_depth):  # before pydantic, which recurses too
            raise too_deep
        if not isinstance(data, dict):
            raise MessageError("not_object", f"expected a JSON object, got {type(data).__name__}")
        try:
            message = cls.model_validate(data)
        except ValidationError as exc:
            raise MessageError(cls.reason_of(exc), describe_validation_error(exc, cls.TOPIC)) from None
        except (ValueError, TypeError, RecursionError) as exc:  # a validator that failed in an unforeseen way
            raise MessageError("invalid_schema", f"invalid {cls.TOPIC} message: {str(exc)[:300]}") from None
        message.check_limits(limits)
        return message

    @classmethod
    def default_limits(cls) -> DecodeLimits:
        return DecodeLimits()

    def check_limits(self, limits: DecodeLimits) -> None:
        """Raise :class:`MessageError` when a valid message is over a limit of its type."""

    @classmethod
    def reason_of(cls, exc: ValidationError) -> str:
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
