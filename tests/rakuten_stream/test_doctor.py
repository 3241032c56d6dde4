"""`doctor` says what is reachable and reports a stopped service instead of hanging."""

import time

from rakuten_stream.doctor import run_checks
from rakuten_stream.embedded_broker import free_port
from rakuten_stream.settings import Settings


def test_doctor_reports_running_services_as_reachable(kafka_bootstrap, postgres_url, redis_url):
    results = {r.name: r for r in run_checks(Settings(kafka={"bootstrap_servers": kafka_bootstrap},
                                                      database={"url": postgres_url},
                                                      cache={"redis_url": redis_url}))}
    assert all(r.ok for r in results.values()), results
    assert "postgresql" in results["database"].detail


def test_doctor_reports_stopped_services_as_unreachable_within_seconds():
    port = free_port()  # nothing listens there
    settings = Settings(kafka={"bootstrap_servers": f"127.0.0.1:{port}"},
                        database={"url": f"postgresql://postgres@127.0.0.1:{port}/x"},
                        cache={"redis_url": f"redis://127.0.0.1:{port}/0"})
    start = time.monotonic()
    results = run_checks(settings)
    assert time.monotonic() - start < 15
    assert [r.ok for r in results] == [False, False, False]
    assert all(r.advice for r in results)
