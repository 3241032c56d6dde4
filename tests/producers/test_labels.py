"""`rakuten-stream label`: CSV and JSON lines to labels.v1, bad rows reported and not sent."""

from __future__ import annotations

import io
import json

from typer.testing import CliRunner

from producers.labels import read_labels
from rakuten_cli.main import app
from schemas import Label
from tests.helpers import read_topic

runner = CliRunner()


def env_of(settings) -> dict[str, str]:
    return {"RAKUTEN_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "RAKUTEN_TOPIC_LABELS": settings.topics.labels, "RAKUTEN_TOPIC_PARTITIONS": "2"}


def labels_on_topic(settings, expected: int) -> dict[int, Label]:
    messages = read_topic(settings, settings.topics.labels, expected=expected, idle_s=1.0)
    labels = [Label.from_bytes(m.value()) for m in messages]
    assert all(m.key() == str(label.productid).encode() for m, label in zip(messages, labels, strict=True))
    return {label.productid: label for label in labels}


def test_bad_rows_are_reported_with_their_line_and_reason_in_memory():
    text = ("productid,prdtypecode,source\n"
            "11,1560,shop\n"
            "12,abc,\n"
            ",2583,\n"
            "-4,10,\n"
            "15,2705,\n")
    rows = read_labels(io.StringIO(text), "labels.csv", source="cli")
    assert [(r.productid, r.prdtypecode, r.source) for r in rows.labels] == [(11, 1560, "shop"), (15, 2705, "cli")]
    assert [str(b) for b in rows.bad] == ["line 3: prdtypecode 'abc' is not an integer", "line 4: missing productid",
                                          "line 5: productid '-4' is not a positive integer"]

    jsonl = ('{"productid": 21, "prdtypecode": 10}\n\n[1, 2]\n{"productid": 22\n'
             '{"productid": 23, "prdtypecode": 1.5}\n')
    rows = read_labels(io.StringIO(jsonl), "-")
    assert rows.format == "jsonl" and [r.productid for r in rows.labels] == [21]
    assert [b.line for b in rows.bad] == [3, 4, 5]
    assert rows.bad[0].reason == "not a JSON object (list)" and rows.bad[1].reason.startswith("not JSON")
    assert rows.bad[2].reason == "prdtypecode 1.5 is not an integer"


def test_label_publishes_a_csv_file_and_reports_bad_rows(settings, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("productid,prdtypecode\n101,1560\n102,2583\nnot-a-number,10\n103,10\n", encoding="utf-8")
    result = runner.invoke(app, ["label", "--data", str(path), "--source", "audit", "--json"], env=env_of(settings))
    assert result.exit_code == 1, result.output  # one bad row: the good ones are sent, the exit code says so
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sent"] == 3 and summary["bad_rows"] == 1
    assert summary["errors"] == ["line 4: productid 'not-a-number' is not an integer"]
    labels = labels_on_topic(settings, 3)
    assert {p: (lab.prdtypecode, lab.source) for p, lab in labels.items()} == {
        101: (1560, "audit"), 102: (2583, "audit"), 103: (10, "audit")}


def test_label_reads_json_lines_from_stdin(settings):
    stdin = '{"productid": 201, "prdtypecode": 2705, "source": "moderation"}\n{"productid": 202, "prdtypecode": 40}\n'
    result = runner.invoke(app, ["label", "--data", "-"], env=env_of(settings), input=stdin)
    assert result.exit_code == 0, result.output
    assert "sent 2 label(s)" in result.output
    labels = labels_on_topic(settings, 2)
    assert labels[201].source == "moderation" and labels[202].prdtypecode == 40


def test_a_csv_without_the_label_columns_is_one_line_and_exit_2(settings, tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("id,category\n1,2\n", encoding="utf-8")
    result = runner.invoke(app, ["label", "--data", str(path)], env=env_of(settings))
    assert result.exit_code == 2
    assert "missing column(s) productid, prdtypecode" in result.output
