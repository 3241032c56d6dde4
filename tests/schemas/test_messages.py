"""The message contracts: what a consumer accepts, rejects, and how it says why."""

import base64
import json

import pytest

from schemas import DeadLetter, Label, MessageError, Prediction, ProductListing


def listing(**fields) -> bytes:
    return json.dumps({"productid": 42, "designation": "Piscine tubulaire 3m"} | fields).encode()


def test_a_listing_round_trips_through_bytes_with_its_image_intact():
    photo = bytes(range(256)) * 4
    sent = ProductListing(productid=42, imageid=7, designation="Lampe", description="<b>LED</b>",
                          image={"data": photo, "content_type": "image/jpeg"})
    received = ProductListing.from_bytes(sent.to_bytes())
    assert received.image.data == photo
    assert received == sent


def test_unknown_extra_fields_are_accepted_and_kept():
    received = ProductListing.from_bytes(listing(colour="bleu", schema_version="1.3"))
    assert received.designation == "Piscine tubulaire 3m"
    assert received.model_extra == {"colour": "bleu"}


def test_an_unknown_major_version_is_rejected_with_a_clear_reason():
    with pytest.raises(MessageError) as err:
        ProductListing.from_bytes(listing(schema_version="2.0"))
    assert err.value.reason == "unsupported_version"
    assert "major version 2" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b"not json", "not_json", "JSON"),
        (b"[1, 2]", "not_object", "object"),
        (b"", "empty", "empty"),
        (listing(designation="   "), "invalid_schema", "designation"),
        (listing(productid="abc"), "invalid_schema", "productid"),
        (listing(image={"data": "@@not base64@@"}), "invalid_schema", "image.data"),
        (listing(image={"uri": "ftp://x/y.jpg"}), "invalid_schema", "image.uri"),
        (listing(image={}), "invalid_schema", "image"),
    ],
)
def test_an_invalid_listing_is_rejected_naming_the_field(raw, reason, field):
    with pytest.raises(MessageError) as err:
        ProductListing.from_bytes(raw)
    assert err.value.reason == reason
    assert field in str(err.value)


def test_a_dead_letter_keeps_the_original_bytes_exactly():
    original = b"\x00\xff{broken"
    letter = DeadLetter(original=original, topic="products.v1", partition=1, offset=9,
                        error_class="not_json", error_message="not JSON")
    assert DeadLetter.from_bytes(letter.to_bytes()).original == original
    assert json.loads(letter.to_bytes())["original"] == base64.b64encode(original).decode()


def test_other_contracts_validate_their_fields():
    with pytest.raises(MessageError, match="prdtypecode"):
        Label.from_bytes(b'{"productid": 1}')
    with pytest.raises(MessageError, match="confidence"):
        Prediction.from_bytes(json.dumps({
            "productid": 1, "prdtypecode": 10, "category": "livres", "confidence": 1.5, "top_k": [],
            "model_version": "v1", "predicted_at": "2026-01-01T00:00:00Z"}).encode())
