"""Decoding a batch: every bad input becomes a dead letter with its own reason, or a text-only
listing with a note when only its image by reference is bad; nothing raises, the batch goes on.

Fast and in memory (stub messages); the worker test runs the same inputs through a real broker.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from schemas import ListingLimits
from stream_workers.decoding import decode_batch
from stream_workers.image_sources import ImagePolicy
from tests.helpers import listing_json


class StubMessage:
    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return None

    def topic(self) -> str:
        return "products.v1"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG of a few dozen bytes whose header declares 900 million pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


def jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def deep(depth: int) -> bytes:
    return b'{"productid": 9, "designation": "x", "source": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


PHOTO = jpeg()
#: every bad inline input of issue 8 and the dead-letter reason it must get
BAD = {
    "not_json": b"{this is not json",
    "not_utf8": b'{"productid": 1, "designation": "caf\xe9"}',
    "too_deep": deep(5_000),
    "invalid_schema": json.dumps({"productid": "trois", "designation": "Lampe"}).encode(),
    "missing_title": json.dumps({"productid": 4}).encode(),
    "empty_title": listing_json(5, "   "),
    "unsupported_version": listing_json(6, "Lampe", schema_version="2.0"),
    "description_too_long": listing_json(7, "Lampe", "x" * 60_000),
    "title_too_long": listing_json(8, "T" * 2_000),
    "bad_base64": json.dumps({"productid": 9, "designation": "Lampe", "image": {"data": "***"}}).encode(),
    "not_an_image": listing_json(10, "Lampe", image=b"GIF89a but not really an image"),
    "truncated_image": listing_json(11, "Lampe", image=PHOTO[: len(PHOTO) // 2]),
    "image_too_large": listing_json(12, "Lampe", image=b"\xff\xd8" + b"\0" * 10_000_000),
    "too_many_pixels": listing_json(13, "Lampe", image=png_bomb()),
    "message_too_large": listing_json(14, "Lampe", "x" * 20_000_000),
}


def messages(values: list[bytes]) -> list[StubMessage]:
    return [StubMessage(v, i) for i, v in enumerate(values)]


def test_every_bad_input_is_a_dead_letter_with_its_reason_and_the_good_ones_go_on():
    good = [listing_json(100 + i, f"Piscine tubulaire {i}", image=PHOTO) for i in range(3)]
    values = [v for pair in zip(good * 5, BAD.values(), strict=False) for v in pair] + good
    limits = ListingLimits(max_message_bytes=15_000_000)  # let the 10 MB inline image reach the image check
    decoded, rejected = decode_batch(messages(values), ImagePolicy(), want_images=True, limits=limits)

    assert {r.message.value(): r.reason for r in rejected} == {v: reason for reason, v in BAD.items()}
    assert len(decoded) == len(values) - len(BAD)
    assert all(d.image is not None for d in decoded)


def test_a_bad_inline_image_is_a_dead_letter_even_for_a_text_only_model():
    values = [BAD["truncated_image"], listing_json(1, "Lampe", image=PHOTO)]
    decoded, rejected = decode_batch(messages(values), ImagePolicy(), want_images=False)
    assert [r.reason for r in rejected] == ["truncated_image"]
    assert len(decoded) == 1 and decoded[0].image is None


def test_a_decoder_bug_is_one_dead_letter_not_the_end_of_the_batch(monkeypatch):
    from schemas import ProductListing

    real = ProductListing.from_bytes.__func__

    def flaky(cls, raw, limits=None):
        if b"boom" in raw:
            raise KeyError("a bug")
        return real(cls, raw, limits)

    monkeypatch.setattr(ProductListing, "from_bytes", classmethod(flaky))
    decoded, rejected = decode_batch(messages([listing_json(1, "boom"), listing_json(2, "Lampe")]), ImagePolicy(),
                                     want_images=False)
    assert [r.reason for r in rejected] == ["decode_error"] and len(decoded) == 1


def test_odd_unicode_is_text_too():
    value = json.dumps({"productid": 1, "designation": "caf\ud800 \u0000 lampe \U0001f4a1"}).encode()
    decoded, rejected = decode_batch(messages([value]), ImagePolicy(), False)
    assert not rejected and decoded[0].listing.designation == "caf\ud800 \x00 lampe \U0001f4a1"


def test_sql_and_html_in_text_reach_the_model_verbatim():
    title = "Robert'); DROP TABLE predictions;--"
    description = "<script>alert('x')</script><b>Lampe</b>"
    decoded, rejected = decode_batch(messages([listing_json(1, title, description)]), ImagePolicy(), False)
    assert not rejected
    assert decoded[0].listing.designation == title and decoded[0].listing.description == description


def test_the_same_listing_a_thousand_times_is_a_thousand_listings_with_one_content_hash():
    value = listing_json(7, "Lampe de chevet", "LED", image=PHOTO)
    decoded, rejected = decode_batch(messages([value] * 1_000), ImagePolicy(), want_images=True)
    assert not rejected and len(decoded) == 1_000
    assert len({d.content_hash for d in decoded}) == 1


# --- images by reference: text only, with the reason kept -------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    (root / "photo.jpg").write_bytes(PHOTO)
    (root / "truncated.jpg").write_bytes(PHOTO[: len(PHOTO) // 2])
    (root / "text.jpg").write_bytes(b"just text")
    (root / "bomb.png").write_bytes(png_bomb())
    (root / "big.jpg").write_bytes(b"\xff" * 10_000_000)
    os.mkfifo(root / "pipe.jpg")
    return root


def test_an_image_uri_that_cannot_be_used_falls_back_to_text_with_the_reason(root):
    uris = {
        "ok": root / "photo.jpg", "truncated_image": root / "truncated.jpg", "not_an_image": root / "text.jpg",
        "too_many_pixels": root / "bomb.png", "too_large": root / "big.jpg", "refused": root / "pipe.jpg",
        "not_found": root / "missing.jpg",
    }
    values = [listing_json(i + 1, "Lampe", image_uri=path.as_uri()) for i, path in enumerate(uris.values())]
    values += [listing_json(50, "Lampe", image_uri="file:///etc/passwd"),
               listing_json(51, "Lampe", image_uri="file:///dev/zero")]
    decoded, rejected = decode_batch(messages(values), ImagePolicy(file_roots=(root,)), want_images=True)

    assert not rejected, "an image by reference never makes the listing a dead letter"
    outcomes = [d.image_outcome for d in decoded]
    assert outcomes == [*uris, "refused", "refused"]
    assert decoded[0].image is not None and decoded[0].image_note is None
    for d in decoded[1:]:
        assert d.image is None and d.image_note.startswith(f"image not used, text only: {d.image_outcome}")


def test_file_uris_are_refused_by_default(root):
    decoded, _ = decode_batch(messages([listing_json(1, "Lampe", image_uri=(root / "photo.jpg").as_uri())]),
                              ImagePolicy(), want_images=True)
    assert decoded[0].image is None and decoded[0].image_outcome == "refused"
