"""The alert rules in deploy/prometheus/ pass `promtool check rules` and their unit tests (`promtool test rules`)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:  # like the page's chromium: skipped on a laptop without it, a failure in CI
        message = "promtool not found: apt-get install -y prometheus (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_the_alert_rules_are_valid_and_their_unit_tests_pass(promtool):
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_prometheus_loads_the_rules_and_scrapes_the_drift_consumer():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    names = [n for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
    assert "drift-consumer" in names
