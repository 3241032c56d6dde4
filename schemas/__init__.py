"""Message contracts (one per topic and version) and table definitions. A leaf: imports nothing of ours."""

from schemas.dead_letters import DeadLetter
from schemas.drift import DriftReport, RetrainRequest
from schemas.labels import Label
from schemas.model_updates import ModelUpdate
from schemas.predictions import CategoryScore, Prediction, SourcePosition
from schemas.products import ListingLimits, ProductImage, ProductListing
from schemas.versioning import DecodeLimits, MessageError, VersionedMessage

MESSAGE_TYPES: tuple[type[VersionedMessage], ...] = (
    ProductListing, Prediction, Label, DeadLetter, DriftReport, RetrainRequest, ModelUpdate,
)

__all__ = [
    "CategoryScore", "DeadLetter", "DecodeLimits", "DriftReport", "Label", "ListingLimits", "MESSAGE_TYPES",
    "MessageError", "ModelUpdate", "Prediction", "ProductImage", "ProductListing", "RetrainRequest",
    "SourcePosition", "VersionedMessage",
]
