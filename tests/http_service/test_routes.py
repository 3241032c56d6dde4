"""The HTTP API against a real model, the embedded broker and PostgreSQL: every route, every refusal."""

from __future__ import annotations

import base64

import pytest

from rakuten_stream.datasets import load_dataset
from schemas import Label, Prediction, ProductListing
from tests.helpers import read_topic

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample(tiny_data):
    records = load_dataset(tiny_data).records
    with_image = next(r for r in records if r.image_path is not None)
    text_only = next(r for r in records if r.image_path is None) if any(r.image_path is None for r in records) \
        else records[1]
    return with_image, text_only


def problems(response) -> dict[str, str]:
    return {p["field"]: p["reason"] for p in response.json()["detail"]}


# -- predictions ------------------------------------------------------------------------------------
def test_one_listing_as_json_gets_a_prediction_of_the_predictions_contract(client, sample):
    record, _ = sample
    body = {"productid": record.productid, "designation": record.designation, "description": record.description,
            "image": {"data": base64.b64encode(record.image_path.read_bytes()).decode()}}
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 200, response.text
    prediction = Prediction.model_validate(response.json())
    assert prediction.productid == record.productid
    assert prediction.category and 0 < prediction.confidence <= 1
    assert len(prediction.top_k) == 3 and prediction.top_k[0].prdtypecode == prediction.prdtypecode
    assert set(prediction.modalities) == {"tfidf", "image"} and set(prediction.contributions) == {"tfidf", "image"}
    assert prediction.model_version == client.get("/v1/model").json()["version"]
    assert prediction.source is None


def test_a_form_upload_and_inline_base64_give_the_same_answer(client, sample):
    record, _ = sample
    photo = record.image_path.read_bytes()
    form = client.post("/v1/predict", data={"designation": record.designation, "description": record.description},
                       files={"image": ("photo.jpg", photo, "image/jpeg")})
    inline = client.post("/v1/predict", json={"designation": record.designation, "description": record.description,
                                              "image": {"data": base64.b64encode(photo).decode()}})
    assert form.status_code == inline.status_code == 200, form.text
    drop = {"predicted_at", "event_time"}
    assert {k: v for k, v in form.json().items() if k not in drop} == \
        {k: v for k, v in inline.json().items() if k not in drop}
    assert form.json()["productid"] == 0  # no productid given


def test_a_list_gets_a_list_in_its_order_and_an_image_uri_is_fetched_like_the_workers_do(client, sample):
    with_image, text_only = sample
    listings = [{"productid": text_only.productid, "designation": text_only.designation},
                {"productid": with_image.productid, "designation": with_image.designation,
                 "image": {"uri": f"file://{with_image.image_path.resolve()}"}},
                {"productid": 77, "designation": with_image.designation, "image": {"uri": "file:///nonexistent.jpg"}}]
    response = client.post("/v1/predict", json=listings)
    assert response.status_code == 200, response.text
    answers = [Prediction.model_validate(p) for p in response.json()]
    assert [p.productid for p in answers] == [text_only.productid, with_image.productid, 77]
    assert answers[0].modalities == ["tfidf"] and "image" in answers[1].modalities
    assert answers[2].modalities == ["tfidf"]  # an image that cannot be fetched: text only, as in the stream


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"description": "sans titre"}, "designation", "Field required"),
    ({"designation": "   "}, "designation", "must not be empty"),
    ({"designation": 42}, "designation", "string"),
    ({"designation": "Lampe", "productid": -3}, "productid", "greater than 0"),
    ({"designation": "Lampe", "image": {"data": "***"}}, "image.data", "base64"),
    ({"designation": "Lampe", "image": {"uri": "ftp://example.org/a.jpg"}}, "image.uri", "file://"),
    ({"designation": "Lampe", "image": {}}, "image", "exactly one"),
    ({"designation": "Lampe", "schema_version": "2.0"}, "schema_version", "unsupported major version"),
    ({"designation": "Lampe", "image": {"data": base64.b64encode(b"GIF89a not an image").decode()}},
     "image.data", "not_an_image"),
])
def test_a_bad_listing_is_a_422_naming_the_field(client, body, field, words):
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 422, response.text
    found = problems(response)
    assert field in found, found
    assert words.lower() in found[field].lower(), found


def test_bad_bodies_are_4xx_with_a_reason_never_500(client):
    cases = [
        (client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}), 422,
         "(body)", "not JSON"),
        (client.post("/v1/predict", json=[]), 422, "(body)", "empty list"),
        (client.post("/v1/predict", json=["Lampe"]), 422, "[0]", "JSON object"),
        (client.post("/v1/predict", json=[{"designation": "ok"}, {"title": "x"}]), 422, "[1].designation", "required"),
        (client.post("/v1/predict", json=[{"designation": "x"}] * 65), 422, "(body)", "at most 64"),
        (client.post("/v1/predict", content=b"designation=x", headers={"content-type": "text/plain"}), 415,
         "content-type", "multipart/form-data"),
        (client.post("/v1/predict", data={"description": "no title"}), 422, "designation", "required"),
    ]
    for response, status, field, words in cases:
        assert response.status_code == status, response.text
        assert words.lower() in problems(response)[field].lower()
    for path in ("/v1/predictions/not-a-number", "/v1/examples/abc/image"):
        response = client.get(path)
        assert response.status_code == 422 and "integer" in problems(response)["path.productid"]


def test_an_oversized_body_is_refused_before_it_is_read(client, http_settings):
    limit = http_settings.http.max_body_bytes
    declared = client.post("/v1/predict", content=b"x" * (limit + 1), headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    streamed = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]


def test_an_image_over_the_workers_limit_is_refused(client, http_settings, sample):
    record, _ = sample
    big = record.image_path.read_bytes() + b"\0" * http_settings.images.max_bytes
    response = client.post("/v1/predict", data={"designation": record.designation},
                           files={"image": ("big.jpg", big, "image/jpeg")})
    assert response.status_code in (413, 422), response.text


# -- writes ---------------------------------------------------------------------------------------------
def test_writes_without_a_valid_key_are_refused(client):
    listing = {"productid": 5, "designation": "Lampe"}
    label = {"productid": 5, "prdtypecode": 10}
    for path, body in (("/v1/listings", listing), ("/v1/labels", label)):
        assert client.post(path, json=body).status_code == 401
        assert client.post(path, json=body, headers={"X-API-Key": "wrong"}).status_code == 403
        assert client.post(path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403


def test_a_published_listing_reaches_products_and_its_label_reaches_labels(client, http_settings, key):
    listing = {"productid": 4242, "designation": "Perceuse visseuse sans fil 18V"}
    response = client.post("/v1/listings", json=listing, headers=key)
    assert response.status_code == 202, response.text
    assert response.json() == {"topic": http_settings.topics.products, "productids": [4242]}
    [message] = read_topic(http_settings, http_settings.topics.products, expected=1, timeout_s=20)
    assert message.key() == b"4242"
    assert ProductListing.from_bytes(message.value()).designation == listing["designation"]

    code = client.post("/v1/predict", json=listing).json()["top_k"][1]["prdtypecode"]
    bearer = {"Authorization": f"Bearer {key['X-API-Key']}"}
    response = client.post("/v1/labels", json={"productid": 4242, "prdtypecode": code, "source": "back office"},
                           headers=bearer)
    assert response.status_code == 202, response.text
    [message] = read_topic(http_settings, http_settings.topics.labels, expected=1, timeout_s=20)
    assert Label.from_bytes(message.value()).prdtypecode == code


def test_bad_writes_are_422_naming_the_field(client, key):
    assert "productid" in problems(client.post("/v1/listings", json={"designation": "x"}, headers=key))
    assert "prdtypecode" in problems(client.post("/v1/labels", json={"productid": 1}, headers=key))
    unknown = client.post("/v1/labels", json={"productid": 1, "prdtypecode": 31337}, headers=key)
    assert unknown.status_code == 422 and "not a category" in problems(unknown)["prdtypecode"]


# -- reading back, operations -------------------------------------------------------------------------
def test_an_unknown_product_has_no_stored_prediction(client):
    response = client.get("/v1/predictions/987654321")
    assert response.status_code == 404 and "987654321" in response.json()["detail"]


def test_health_readiness_metrics_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
    assert set(ready.json()["checks"]) == {"model", "broker", "database"}
    metrics = client.get("/metrics").text
    assert "rakuten_http_requests_total" in metrics and "rakuten_http_batch_listings" in metrics
    assert "rakuten_model_version_info" in metrics
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/listings", "/v1/labels", "/v1/predictions/{productid}", "/healthz", "/readyz",
            "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "PredictListing" in spec["components"]["schemas"] and "ProductImage" in spec["components"]["schemas"]


def test_the_page_and_its_assets_are_served_from_the_app(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="listing-form"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    examples = client.get("/v1/examples").json()["examples"]
    assert examples and any(e["image_url"] for e in examples)
    photo = client.get(next(e["image_url"] for e in examples if e["image_url"]))
    assert photo.status_code == 200 and photo.content[:2] == b"\xff\xd8"
