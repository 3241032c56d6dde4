"""`rakuten-stream publish | results | lag` as a user runs them: exit codes, messages, what lands on the topics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import TopicPartition
from typer.testing import CliRunner

from rakuten_cli.main import app
from rakuten_stream.embedded_broker import free_port
from rakuten_stream.kafka import ensure_topics, make_consumer, make_producer
from schemas import CategoryScore, Prediction, ProductListing

runner = CliRunner()


@pytest.fixture
def env(settings) -> dict[str, str | None]:
    """The test's settings as the RAKUTEN_* environment the CLI reads."""
    return {
        "RAKUTEN_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "RAKUTEN_TOPIC_PRODUCTS": settings.topics.products,
        "RAKUTEN_TOPIC_PREDICTIONS": settings.topics.predictions,
        "RAKUTEN_TOPIC_PARTITIONS": str(settings.topics.partitions),
        "RAKUTEN_WORKER_GROUP_ID": settings.worker.group_id,
        "RAKUTEN_DATA_DIR": None,  # the built-in category names
    }


def cli(env: dict[str, str | None], *args: str, stdin: str | None = None):
    return runner.invoke(app, list(args), env=env, input=stdin)


def topic_messages(settings, topic: str) -> list:
    consumer = make_consumer(settings, group_id=f"read-{uuid.uuid4().hex[:8]}")
    ends = {}
    for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        if high > low:
            ends[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    messages, deadline = [], time.monotonic() + 20
    while ends and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            messages.append(message)
            if message.offset() + 1 >= ends[message.partition()]:
                del ends[message.partition()]
    consumer.close()
    return messages


# -- publish ------------------------------------------------------------------------------------------
def test_publish_a_flat_sample_fills_the_topic_and_prints_a_summary(settings, env, data_dir):
    result = cli(env, "publish", "--data", str(data_dir), "--limit", "50")

    assert result.exit_code == 0, result.output
    assert "sent 50, failed 0" in result.output and "msg/s" in result.output
    assert len(topic_messages(settings, settings.topics.products)) == 50


def test_publish_with_uri_images_sends_file_uris(settings, env, data_dir):
    result = cli(env, "publish", "--data", str(data_dir), "--limit", "3", "--images", "uri")

    assert result.exit_code == 0, result.output
    listings = [ProductListing.from_bytes(m.value()) for m in topic_messages(settings, settings.topics.products)]
    assert len(listings) == 3
    assert all(listing.image.uri.startswith(f"file://{data_dir.resolve()}/") for listing in listings)


def test_publish_reads_json_lines_from_stdin(settings, env):
    lines = "\n".join(json.dumps({"productid": i, "designation": f"Article {i}"}) for i in (1, 2, 3)) + "\n"
    result = cli(env, "publish", "--data", "-", stdin=lines)

    assert result.exit_code == 0, result.output
    assert sorted(m.key() for m in topic_messages(settings, settings.topics.products)) == [b"1", b"2", b"3"]


def test_publish_a_missing_folder_is_a_clear_error(env, tmp_path):
    result = cli(env, "publish", "--data", str(tmp_path / "nowhere"))

    assert result.exit_code == 2
    assert "no such file or folder" in result.output
    assert "Traceback" not in result.output


def test_publish_a_file_without_the_title_column_is_a_clear_error(env, tmp_path):
    csv_file = tmp_path / "products.csv"
    csv_file.write_text("productid,imageid,description\n1,2,rien\n", encoding="utf-8")
    result = cli(env, "publish", "--data", str(csv_file))

    assert result.exit_code == 2
    assert "missing column(s) designation" in result.output
    assert "Traceback" not in result.output


def test_publish_stops_at_a_malformed_line_after_sending_the_lines_before_it(settings, env):
    result = cli(env, "publish", "--data", "-", stdin='{"productid": 1, "designation": "ok"}\n{oops\n')

    assert result.exit_code == 2
    assert "<stdin>:2: not JSON" in result.output and "sent 1" in result.output
    assert len(topic_messages(settings, settings.topics.products)) == 1


# -- lag ----------------------------------------------------------------------------------------------
@pytest.fixture
def half_read(settings) -> str:
    """The workers' group has committed 3 of 5 messages on partition 0 and none of the 2 on partition 1."""
    ensure_topics(settings)
    producer = make_producer(settings)
    for partition, count in ((0, 5), (1, 2)):
        for _ in range(count):
            producer.produce(settings.topics.products, value=b"{}", partition=partition)
    assert producer.flush(10) == 0
    consumer = make_consumer(settings, settings.worker.group_id)
    consumer.commit(offsets=[TopicPartition(settings.topics.products, 0, 3)], asynchronous=False)
    consumer.close()
    return settings.worker.group_id


def test_lag_prints_the_lag_of_each_partition(env, half_read):
    result = cli(env, "lag")
    assert result.exit_code == 0, result.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("│")]
    # partition, committed, high watermark, lag (then the time behind)
    assert [row[:4] for row in rows] == [["0", "3", "5", "2"], ["1", "-", "2", "2"], ["total", "", "7", "4"]]


def test_lag_json_and_the_max_lag_exit_code(env, half_read):
    result = cli(env, "lag", "--json", "--max-lag", "1")
    assert result.exit_code == 1  # partition 0 and 1 are each 2 behind
    document = json.loads(result.stdout)
    assert (document["total_lag"], document["exceeded"]) == (4, True)
    assert [(p["partition"], p["committed"], p["high_watermark"], p["lag"]) for p in document["partitions"]] \
        == [(0, 3, 5, 2), (1, None, 2, 2)]

    assert cli(env, "lag", "--json", "--max-lag", "2").exit_code == 0


def test_lag_of_an_unknown_topic_is_a_clear_error(env):
    result = cli(env, "lag", "--topic", f"nope-{uuid.uuid4().hex[:6]}")
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_lag_watch_serves_the_gauge_until_interrupted(env, half_read, settings):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rakuten_cli.main", "lag", "--json", "--watch", "0.2", "--metrics-port", str(port)],
        env={k: v for k, v in (os.environ | env).items() if v is not None},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second = json.loads(process.stdout.readline()), json.loads(process.stdout.readline())
        assert first["total_lag"] == second["total_lag"] == 4
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert (f'rakuten_consumer_lag{{group="{half_read}",partition="0",topic="{settings.topics.products}"}} 2.0'
                in metrics)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)  # drain the pipe so the child never blocks on a write
        assert process.returncode == 0


# -- results --------------------------------------------------------------------------------------------
def predictions(settings, *codes: int) -> None:
    ensure_topics(settings)
    producer = make_producer(settings)
    for i, code in enumerate(codes, start=1):
        p = Prediction(productid=i, prdtypecode=code, category=str(code), confidence=0.8,
                       top_k=[CategoryScore(prdtypecode=code, category=str(code), probability=0.8)],
                       model_version="v1", modalities=["text_tfidf", "image"], predicted_at=datetime.now(UTC))
        producer.produce(settings.topics.predictions, key=str(i).encode(), value=p.to_bytes())
    assert producer.flush(10) == 0


def test_results_prints_predictions_with_category_names(settings, env):
    predictions(settings, 2583, 10)
    result = cli(env, "results", "--from-beginning", "--no-follow")

    assert result.exit_code == 0, result.output
    assert "accesoires de piscine" in result.stdout and "livres" in result.stdout
    assert "2 prediction(s)" in result.output


def test_results_as_json_lines_with_a_limit_keep_the_message_contract(settings, env):
    """JSON lines are the messages as on the topic: `category` stays what the worker wrote, as in top_k
    (only the table shows display names)."""
    predictions(settings, 2583, 10, 40)
    result = cli(env, "results", "--from-beginning", "--format", "jsonl", "--limit", "2")

    assert result.exit_code == 0, result.output
    lines = [Prediction.model_validate_json(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert {p.category for p in lines} <= {"2583", "10", "40"}
    assert all(p.category == p.top_k[0].category for p in lines)


def test_results_with_a_group_resume_where_they_stopped(settings, env):
    predictions(settings, 2583, 10)
    name = f"ops-{uuid.uuid4().hex[:6]}"
    first = cli(env, "results", "--from-beginning", "--no-follow", "--format", "jsonl", "--group", name)
    again = cli(env, "results", "--from-beginning", "--no-follow", "--format", "jsonl", "--group", name)

    assert len(first.stdout.splitlines()) == 2
    assert again.stdout == ""
