"""The deployment files (docker-compose, Kubernetes, Prometheus, Grafana) agree with the code they deploy.

They cannot run here (no Docker engine, no cluster), so these tests check what can drift silently:
subcommands that do not exist, RAKUTEN_* variables that no setting reads, panels over metrics
nobody exports, a scaler allowed more replicas than there are partitions.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from rakuten_cli.main import app
from rakuten_stream.metrics import ServiceMetrics
from rakuten_stream.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Subcommands other engineers are adding: the deployment may name them before they exist.
PLANNED_COMMANDS: set[str] = set()  # every command compose runs exists
METRICS_PORT = 9108


def cli_commands() -> dict[str, object]:
    return typer.main.get_command(app).commands


def command_of(args: list[str] | str) -> list[str]:
    return shlex.split(args) if isinstance(args, str) else [str(a) for a in args]


def check_subcommand(args: list[str], where: str) -> None:
    """``args[0]`` is a subcommand (or a planned one) and, when it exists, accepts the rest of ``args``."""
    commands = cli_commands()
    name, rest = args[0], args[1:]
    if name not in commands:
        assert name in PLANNED_COMMANDS, f"{where}: `rakuten-stream {name}` is not a subcommand ({sorted(commands)})"
        return
    commands[name].make_context(name, list(rest))  # raises on an unknown option or a bad value


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def our_services(compose) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items()
            if "build" in s or str(s.get("image", "")).startswith("rakuten-stream")}


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


def setting_names() -> set[str]:
    return Settings.environment_names()


# -- docker-compose ---------------------------------------------------------------------------------
def test_every_service_of_our_image_runs_a_real_subcommand(our_services):
    assert our_services, "no service uses the rakuten-stream image"
    for name, service in our_services.items():
        assert "command" in service, f"{name}: no command (the image's default only prints --help)"
        check_subcommand(command_of(service["command"]), f"docker-compose service {name}")


def test_compose_runs_every_role_on_kafka_postgres_and_redis(compose, our_services):
    services = compose["services"]
    assert {"kafka", "postgres", "redis", "prometheus", "grafana"} <= services.keys()
    roles = {name: command_of(s["command"]) for name, s in our_services.items()}
    assert roles["init-db"] == ["init-db"]
    assert roles["worker"] == ["worker"]
    assert roles["retrain"] == ["retrain-worker"]
    assert services["kafka"]["image"].startswith(("apache/kafka:3.9", "bitnami/kafka"))
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")


def test_kafka_is_a_single_kraft_node_reachable_as_kafka_9092(compose):
    env = compose["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "CLUSTER_ID must be a base64 UUID"
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= Settings().topics.max_message_bytes


def test_our_services_are_configured_through_settings_they_read(our_services):
    for name, service in our_services.items():
        env = service["environment"]
        unknown = {key for key in env if key.startswith("RAKUTEN_")} - setting_names()
        assert not unknown, f"{name}: {unknown} match no field of Settings"
        assert env["RAKUTEN_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["RAKUTEN_DATABASE_URL"].startswith("postgresql://")
        assert env["RAKUTEN_REDIS_URL"].startswith("redis://redis:6379")
        assert any(v.split(":")[1] == env["RAKUTEN_MODEL_DIR"] for v in service["volumes"]), \
            f"{name}: the model dir is not on the shared volume"


def test_services_start_in_order_on_healthy_dependencies(compose):
    services = compose["services"]
    for name in ("worker", "retrain"):
        needs = services[name]["depends_on"]
        for infra in ("kafka", "postgres", "redis"):
            assert needs[infra]["condition"] == "service_healthy", (name, infra)
        assert needs["init-db"]["condition"] == "service_completed_successfully"
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            if rule["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{name} waits on {dependency}'s healthcheck"


def test_prometheus_scrapes_every_role_on_the_metrics_port(compose):
    config = yaml.safe_load(PROMETHEUS.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "rakuten-stream")
    [discovery] = job["dns_sd_configs"]
    assert discovery["port"] == METRICS_PORT
    assert {"worker", "retrain"} <= set(discovery["names"])
    assert set(discovery["names"]) <= compose["services"].keys()


# -- Grafana ----------------------------------------------------------------------------------------
def metric_series() -> set[str]:
    """Every series name the service exports (counters end in _total, histograms in _bucket/_sum/_count)."""
    names = set()
    for family in ServiceMetrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def test_every_grafana_panel_queries_metrics_the_service_exports():
    dashboard = json.loads((GRAFANA / "dashboards" / "rakuten-stream.json").read_text())
    known = metric_series()
    used: set[str] = set()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\brakuten_[a-z0-9_]+", target["expr"]))
            assert names, f"{panel['title']}: {target['expr']} uses no metric of metrics.py"
            assert names <= known, f"{panel['title']}: unknown metric(s) {names - known}"
            used |= names
    # nothing the service measures is left off the dashboard
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in known}
    assert families <= {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    latency = " ".join(t["expr"] for p in panels for t in p["targets"] if "end_to_end" in t["expr"])
    assert all(f"histogram_quantile({q}," in latency for q in ("0.5", "0.95", "0.99"))


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(compose):
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((GRAFANA / "dashboards" / "rakuten-stream.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} == {source["uid"]}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "rakuten-stream.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


# -- Kubernetes -------------------------------------------------------------------------------------
def test_the_worker_deployment_runs_the_worker_with_a_static_member_id_and_a_clean_leave(k8s):
    deployment = k8s["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    check_subcommand(command_of(container["args"]), "k8s Deployment")
    assert command_of(container["args"])[0] == "worker"
    sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert sources == {k8s["ConfigMap"]["metadata"]["name"], k8s["Secret"]["metadata"]["name"]}
    instance = next(e for e in container["env"] if e["name"] == "RAKUTEN_WORKER_INSTANCE_ID")
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert {p["containerPort"] for p in container["ports"]} == {METRICS_PORT}
    assert container["lifecycle"]["preStop"]
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_the_metrics_service_selects_the_worker_pods(k8s):
    service, deployment = k8s["Service"], k8s["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["port"] for p in service["spec"]["ports"]] == [METRICS_PORT]


def test_keda_scales_on_the_lag_of_the_products_topic_up_to_the_partition_count(k8s):
    scaled, config = k8s["ScaledObject"], k8s["ConfigMap"]["data"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == config["RAKUTEN_TOPIC_PRODUCTS"]
    assert trigger["metadata"]["consumerGroup"] == config["RAKUTEN_WORKER_GROUP_ID"]
    assert trigger["metadata"]["bootstrapServers"] == config["RAKUTEN_KAFKA_BOOTSTRAP_SERVERS"]
    assert scaled["spec"]["maxReplicaCount"] == int(config["RAKUTEN_TOPIC_PARTITIONS"]) == 4


def test_k8s_settings_are_settings_the_service_reads(k8s):
    keys = set(k8s["ConfigMap"]["data"]) | set(k8s["Secret"]["stringData"])
    assert keys - setting_names() == set()
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / resource).is_file() for resource in kustomization["resources"])


def test_the_image_runs_rakuten_stream_from_python_3_11_slim():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert 'ENTRYPOINT ["rakuten-stream"]' in dockerfile
    assert f"EXPOSE {METRICS_PORT}" in dockerfile
