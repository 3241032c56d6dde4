"""From Kafka messages to listings ready for the model, or to dead letters with the reason.

Bad input never stops a batch: each message either becomes a :class:`DecodedListing` or a
:class:`Rejected` that the worker sends to the dead-letter topic with the original bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from inference.features.images import ImageDecodeError, decode_image
from inference.features.text_cleaning import ListingText
from schemas import MessageError, ProductListing
from stream_workers.image_sources import ImageFetchError, fetch_many


@dataclass
class DecodedListing:
    message: object  # confluent_kafka.Message
    listing: ProductListing
    text: ListingText
    image: Image.Image | None
    image_note: str | None  # why a referenced image was not used (text-only fallback)
    content_hash: str


@dataclass
class Rejected:
    message: object
    reason: str
    error: str


def content_hash(listing: ProductListing, image_bytes: bytes | None) -> str:
    """What the prediction depends on: title, description and image bytes."""
    digest = hashlib.sha256()
    for part in (listing.designation, listing.description or ""):
        digest.update(part.encode())
        digest.update(b"\x00")
    if image_bytes:
        digest.update(hashlib.sha256(image_bytes).digest())
    return digest.hexdigest()


def decode_batch(messages: Sequence, max_image_bytes: int, fetch_timeout_s: float, want_images: bool
                 ) -> tuple[list[DecodedListing], list[Rejected]]:
    parsed: list[tuple[object, ProductListing]] = []
    rejected: list[Rejected] = []
    for message in messages:
        try:
            parsed.append((message, ProductListing.from_bytes(message.value())))
        except MessageError as exc:
            rejected.append(Rejected(message, exc.reason, str(exc)))

    uris = {i: listing.image.uri for i, (_, listing) in enumerate(parsed)
            if want_images and listing.image is not None and listing.image.uri}
    fetched = fetch_many(uris, fetch_timeout_s, max_image_bytes)

    decoded: list[DecodedListing] = []
    for i, (message, listing) in enumerate(parsed):
        image, note, image_bytes = None, None, None
        if listing.image is not None and listing.image.data is not None:
            image_bytes = listing.image.data
            try:  # an inline payload that is not an image is bad input: dead letter
                image = decode_image(image_bytes, max_bytes=max_image_bytes) if want_images else None
            except ImageDecodeError as exc:
                rejected.append(Rejected(message, "bad_image", f"image.data: {exc}"))
                continue
        elif i in fetched:
            result = fetched[i]
            if isinstance(result, ImageFetchError):
                note = f"image not fetched, text only: {result}"
            else:
                image_bytes = result
                try:
                    image = decode_image(result, max_bytes=max_image_bytes)
                except ImageDecodeError as exc:
                    image, note = None, f"image unreadable, text only: {exc}"
        decoded.append(DecodedListing(message, listing, ListingText.of(listing.designation, listing.description),
                                      image, note, content_hash(listing, image_bytes)))
    return decoded, rejected
