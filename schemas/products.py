"""``products.v1``: a product listing to classify."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.versioning import Base64Data, DecodeLimits, MessageError, VersionedMessage


@dataclass(frozen=True)
class ListingLimits(DecodeLimits):
    """Bounds on a listing. Over-long text is rejected (a dead letter), never cut short: a
    prediction stored for a listing must be a prediction of that whole listing."""

    max_title_chars: int = 1_000  # the Rakuten catalogue's longest title is 250
    max_description_chars: int = 50_000  # its longest description is about 10,000



class ProductImage(BaseModel):
    """The photo, either inline (base64 in JSON) or by reference (file://, http://, https://)."""

    model_config = ConfigDict(extra="allow")

    data: Base64Data | None = Field(None, description="image bytes, base64-encoded")
    uri: str | None = Field(None, description="file://, http:// or https:// URI of the image")
    content_type: str | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ProductImage:
        if (self.data is None) == (self.uri is None):
            raise ValueError("give exactly one of image.data (inline base64) or image.uri")
        return self

    @field_validator("uri")
    @classmethod
    def _supported_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file://", "http://", "https://")):
            raise ValueError("image.uri must start with file://, http:// or https://")
        return value


class ProductListing(VersionedMessage):
    TOPIC: ClassVar[str] = "products.v1"

    productid: int = Field(..., gt=0)
    imageid: int | None = Field(None, gt=0)
    designation: str = Field(..., description="the listing's title (French)")
    description: str | None = None
    image: ProductImage | None = None
    source: dict[str, Any] | None = Field(None, description="free metadata of the publisher")
    event_time: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("designation")
    @classmethod
    def _title_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("designation (the title) must not be empty")
        return value

    @property
    def key(self) -> bytes:
        return str(self.productid).encode()

    @classmethod
    def default_limits(cls) -> ListingLimits:
        return ListingLimits()

    def check_limits(self, limits: DecodeLimits) -> None:
        if not isinstance(limits, ListingLimits):
            return
        if len(self.designation) > limits.max_title_chars:
            raise MessageError("title_too_long", f"designation (the title) has {len(self.designation)} characters, "
                               f"over the limit of {limits.max_title_chars}")
        if self.description is not None and len(self.description) > limits.max_description_chars:
            raise MessageError("description_too_long", f"description has {len(self.description)} characters, "
                               f"over the limit of {limits.max_description_chars}")

    @classmethod
    def reason_of(cls, exc: ValidationError) -> str:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        if loc == ("designation",) and first["type"] in ("missing", "value_error"):
            return "missing_title" if first["type"] == "missing" else "empty_title"
        if loc == ("image", "data") and first["type"] == "value_error":
            return "bad_base64"
        return super().reason_of(exc)
