"""`drift list [--json]` and `drift show ID [--html FILE]` over stored drift reports (SQLite, no broker)."""

import gzip
import json
from datetime import UTC, datetime

from typer.testing import CliRunner

from rakuten_cli.main import app
from rakuten_stream.database import make_engine, upgrade
from stream_workers.drift import reports


def store_two(url: str) -> None:
    upgrade(url)
    engine = make_engine(url)
    for seq, alarmed in ((0, False), (1, True)):
        reports.store(
            engine,
            {
                "report_id": f"v1-abcdef-w{seq:06d}",
                "model_version": "v1",
                "window_id": f"v1#{seq}",
                "window_start": datetime(2026, 12, 4, 1, seq, tzinfo=UTC),
                "window_end": datetime(2026, 12, 4, 1, seq, 30, tzinfo=UTC),
                "n_predictions": 500,
                "n_labels": 40,
                "metrics": {"class_distribution": {"10": 1.0}},
                "drift_detected": alarmed,
                "drift_score": 9.5 if alarmed else 1.1,
                "drift_threshold": 2.5,
                "estimated_f1": 0.7,
                "true_f1": None,
                "triggers": ["distribution_drift"] if alarmed else [],
                "episode_id": "v1#1" if alarmed else None,
                "retrain_request_id": "r-1" if alarmed else None,
                "report_html_gz": gzip.compress(b"<html>evidently</html>") if alarmed else None,
            },
        )
    engine.dispose()


def test_drift_list_prints_the_latest_windows_first_as_json(sqlite_url):
    store_two(sqlite_url)
    result = CliRunner().invoke(app, ["--database-url", sqlite_url, "drift", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [r["report_id"] for r in listed] == ["v1-abcdef-w000001", "v1-abcdef-w000000"]
    assert listed[0]["triggers"] == ["distribution_drift"] and listed[0]["has_html"] is True
    table = CliRunner().invoke(app, ["--database-url", sqlite_url, "drift", "list"])
    assert table.exit_code == 0 and "500" in table.output  # a rich table (on stderr: the console)


def test_drift_show_prints_one_report_and_writes_its_html(sqlite_url, tmp_path):
    store_two(sqlite_url)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        app, ["--database-url", sqlite_url, "drift", "show", "v1-abcdef-w000001", "--html", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.split("\nHTML")[0])["drift_score"] == 9.5
    assert out.read_text() == "<html>evidently</html>"
    missing = CliRunner().invoke(app, ["--database-url", sqlite_url, "drift", "show", "nope"])
    assert missing.exit_code == 1 and "no drift report" in missing.output
    no_html = CliRunner().invoke(
        app, ["--database-url", sqlite_url, "drift", "show", "v1-abcdef-w000000", "--html", str(out)]
    )
    assert no_html.exit_code == 1
