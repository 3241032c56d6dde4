"""One micro-batch in memory: raw messages in, predictions and dead letters out, one model call."""

from __future__ import annotations

from rakuten_stream.metrics import PrometheusObserver
from rakuten_stream.settings import Settings
from stream_workers.batch import BatchProcessor
from tests.helpers import listing_json
from tests.stream_workers.stubs import TOPIC, StubMessage, StubRuntime


def processor(runtime: StubRuntime | None = None) -> BatchProcessor:
    return BatchProcessor(runtime or StubRuntime(), None, PrometheusObserver(), Settings(), "test-worker")


def test_a_batch_of_listings_is_scored_in_one_model_call_with_its_source_positions():
    runtime = StubRuntime()
    batch = [StubMessage(listing_json(1, "Un livre de cuisine"), 0, 4),
             StubMessage(listing_json(2, "Piscine tubulaire ronde"), 1, 9)]
    outcome = processor(runtime).process(batch)
    assert runtime.batches == [2]
    assert [(p.productid, p.prdtypecode, p.model_version) for p in outcome.predictions] == [
        (1, 10, "stub-runtime"), (2, 2583, "stub-runtime")]
    assert [(p.source.topic, p.source.partition, p.source.offset) for p in outcome.predictions] == [
        (TOPIC, 0, 4), (TOPIC, 1, 9)]
    assert outcome.dead_letters == []


def test_an_invalid_message_is_a_dead_letter_with_its_original_bytes_and_the_rest_is_predicted():
    bad = b"{not json"
    outcome = processor().process([StubMessage(bad, 0, 0, b"k"), StubMessage(listing_json(3, "Livre"), 0, 1)])
    [letter] = outcome.dead_letters
    assert (letter.error_class, letter.original, letter.offset, letter.worker_id) == ("not_json", bad, 0, "test-worker")
    assert outcome.keys == [b"k"]
    assert [p.productid for p in outcome.predictions] == [3]


def test_a_batch_of_only_bad_messages_calls_no_model():
    runtime = StubRuntime()
    outcome = processor(runtime).process([StubMessage(b"\xff\xfe", 0, 0)])
    assert runtime.batches == [] and [d.error_class for d in outcome.dead_letters] == ["not_utf8"]
