"""From Kafka messages to listings ready for the model, or to dead letters with the reason.

Bad input never stops a batch: each message either becomes a :class:`DecodedListing` or a
:class:`Rejected` that the worker sends to the dead-letter topic with the original bytes and a
precise reason code (``not_json``, ``too_deep``, ``title_too_long``, ``truncated_image``, ...).
An image by reference that cannot be had (refused, missing, too large, too slow, not an image)
is not a reason to reject the listing: it is classified on its text, and the reason is kept
as ``image_note`` (and ``image_outcome``, a metric label) for the prediction. An inline image is
checked even when the model has no image model, so that the same message is a dead letter or
not whatever version serves; images by reference are fetched only for a model that uses them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from inference.features.images import ImageDecodeError, decode_image
from inference.features.text_cleaning import ListingText
from schemas import ListingLimits, MessageError, ProductListing
from stream_workers.image_sources import FetchOutcome, ImageFetchError, ImagePolicy, fetch_many

log = logging.getLogger(__name__)


@dataclass
class DecodedListing:
    message: object  # confluent_kafka.Message
    listing: ProductListing
    text: ListingText
    image: Image.Image | None
    image_note: str | None  # why a referenced image was not used (text-only fallback)
    content_hash: str
    image_outcome: str | None = None  # ok, refused, timeout, too_large, not_an_image, ...; None: no image URI


@dataclass
class Rejected:
    message: object
    reason: str
    error: str


def content_hash(listing: ProductListing, image_bytes: bytes | None) -> str:
    """What the prediction depends on: title, description and image bytes."""
    digest = hashlib.sha256()
    for part in (listing.designation, listing.description or ""):
        digest.update(part.encode("utf-8", errors="surrogatepass"))
        digest.update(b"\x00")
    if image_bytes:
        digest.update(hashlib.sha256(image_bytes).digest())
    return digest.hexdigest()


def parse(message, limits: ListingLimits) -> ProductListing | Rejected:
    """One message's listing, or its rejection; never an exception."""
    try:
        return ProductListing.from_bytes(message.value(), limits)
    except MessageError as exc:
        return Rejected(message, exc.reason, str(exc))
    except Exception as exc:  # a bug, not bad input: still this message's dead letter, not the batch's end
        log.exception("unexpected failure decoding the message at %s[%s]@%s", message.topic(), message.partition(),
                      message.offset())
        return Rejected(message, "decode_error", f"{type(exc).__name__}: {str(exc)[:300]}")


def decode_batch(messages: Sequence, images: ImagePolicy, want_images: bool, limits: ListingLimits | None = None,
                 ) -> tuple[list[DecodedListing], list[Rejected]]:
    limits = limits or ListingLimits()
    parsed: list[tuple[object, ProductListing]] = []
    rejected: list[Rejected] = []
    for message in messages:
        result = parse(message, limits)
        if isinstance(result, Rejected):
            rejected.append(result)
        else:
            parsed.append((message, result))

    uris = {i: listing.image.uri for i, (_, listing) in enumerate(parsed)
            if want_images and listing.image is not None and listing.image.uri}
    fetched = fetch_many(uris, images)

    decoded: list[DecodedListing] = []
    for i, (message, listing) in enumerate(parsed):
        image, note, outcome, image_bytes = None, None, None, None
        if listing.image is not None and listing.image.data is not None:
            image_bytes = listing.image.data
            try:  # an inline payload that is not an image is bad input, whichever model serves: dead letter
                image = _decode(image_bytes, images)
                if not want_images:
                    image = None
            except ImageDecodeError as exc:
                rejected.append(Rejected(message, exc.reason, f"image.data: {exc}"))
                continue
        elif i in fetched:
            result = fetched[i]
            if isinstance(result, ImageFetchError):
                outcome, note = result.outcome.value, f"image not used, text only: {result}"
            else:
                image_bytes, outcome = result, FetchOutcome.OK.value
                try:
                    image = _decode(result, images)
                except ImageDecodeError as exc:
                    outcome, note = exc.reason, f"image not used, text only: {exc.reason}: {exc}"
        decoded.append(DecodedListing(message, listing, ListingText.of(listing.designation, listing.description),
                                      image, note, content_hash(listing, image_bytes), outcome))
    return decoded, rejected


def _decode(data: bytes, images: ImagePolicy) -> Image.Image:
    return decode_image(data, max_bytes=images.max_bytes, max_pixels=images.max_pixels)
