"""The message contracts: what a consumer accepts, rejects, and how it says why."""

import base64
import json

import pytest

from schemas import DeadLetter, Label, ListingLimits, MessageError, Prediction, ProductListing


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
        (b"\xff\xfe{}", "not_utf8", "UTF-8"),
        (listing(designation="   "), "empty_title", "designation"),
        (json.dumps({"productid": 42}).encode(), "missing_title", "designation"),
        (listing(designation=["a", "list"]), "invalid_schema", "designation"),
        (listing(productid="abc"), "invalid_schema", "productid"),
        (listing(productid=-1), "invalid_schema", "productid"),
        (listing(image={"data": "@@not base64@@"}), "bad_base64", "image.data"),
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


# --- limits: every violation its own reason, and nothing but MessageError ----------------------
def nested(depth: int) -> bytes:
    """A listing whose arrays and objects nest ``depth`` levels deep (the listing itself is one)."""
    inner = depth - 2
    return b'{"productid": 42, "designation": "Lampe", "source": {"a": ' + b"[" * inner + b"]" * inner + b"}}"


@pytest.mark.parametrize("depth", [33, 200, 5_000, 100_000])
def test_deep_nesting_is_rejected_as_too_deep_not_a_recursion_error(depth):
    with pytest.raises(MessageError) as err:
        ProductListing.from_bytes(nested(depth))
    assert err.value.reason == "too_deep"


def test_nesting_within_the_limit_and_brackets_inside_strings_are_fine():
    assert ProductListing.from_bytes(nested(32)).source is not None
    assert ProductListing.from_bytes(listing(designation="[[[[" * 100, description="{" * 1000)).designation
    with pytest.raises(MessageError, match="deeper than the limit of 3"):
        ProductListing.from_bytes(nested(4), ListingLimits(max_depth=3))


def test_every_contract_has_the_depth_guard():
    deep = b'{"productid": 1, "prdtypecode": 10, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(MessageError) as err:
        Label.from_bytes(deep)
    assert err.value.reason == "too_deep"


@pytest.mark.parametrize(
    ("raw", "limits", "reason"),
    [
        (listing(designation="T" * 1_001), ListingLimits(), "title_too_long"),
        (listing(description="D" * 50_001), ListingLimits(), "description_too_long"),
        (listing(description="D" * 5_000), ListingLimits(max_message_bytes=1_000), "message_too_large"),
        (b'{"productid": ' + b"9" * 5_000 + b', "designation": "x"}', ListingLimits(), "not_json"),
    ],
)
def test_a_listing_over_a_limit_is_rejected_with_its_own_reason(raw, limits, reason):
    with pytest.raises(MessageError) as err:
        ProductListing.from_bytes(raw, limits)
    assert err.value.reason == reason


def test_sql_and_html_in_text_are_just_text():
    title = "Robert'); DROP TABLE predictions;-- <script>alert(1)</script>"
    received = ProductListing.from_bytes(listing(designation=title, description="<img src=x onerror=alert(1)>"))
    assert received.designation == title and received.description == "<img src=x onerror=alert(1)>"
