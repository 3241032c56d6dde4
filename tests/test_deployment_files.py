"""The deployment files (docker-compose, Kubernetes, Prometheus, Grafana) agree with the code they deploy.

They cannot run here (no Docker engine, no cluster), so these tests check what can drift silently:
subcommands that do not exist, RAKUTEN_* variables that no setting reads, panels over metrics
nobody exports, a scaler allowed more replicas than there are partitions, manifests the API server
would refuse (kubernetes-validate for the core kinds, KEDA's own CRD models for ScaledObject and
TriggerAuthentication), pods the Pod Security "restricted" profile would refuse, images not
pinned to the project's version.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
import typer
import yaml
from cloudcoil.models.keda import v1alpha1 as keda

from rakuten_cli.main import app
from rakuten_stream.metrics import PrometheusObserver, RetrainMetrics
from rakuten_stream.settings import Settings
from stream_workers.drift.monitor import DriftMetrics

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# Subcommands and settings other engineers are adding (issue 10: the drift consumer; issue 11: the
# HTTP service): the deployment may name them before they exist.
PLANNED_COMMANDS: set[str] = set()
METRICS_PORT = 9108
HTTP_PORT = 8000
#: the worker's probes next to /metrics (issue 8): live = the loop makes progress, ready = model + sinks
LIVENESS_PATH, READINESS_PATH = "/healthz", "/readyz"
#: the Kubernetes version the manifests are validated for
KUBERNETES_VERSION = "1.31"


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


class Manifests(dict):
    """``kustomization.yaml``'s resources, by (kind, name)."""

    def one(self, kind: str) -> dict:
        [doc] = self.of_kind(kind)
        return doc

    def of_kind(self, kind: str) -> list[dict]:
        return [doc for (k, _), doc in self.items() if k == kind]


def load_manifests(folder: Path) -> Manifests:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = [doc for resource in kustomization["resources"]
            for doc in yaml.safe_load_all((folder / resource).read_text()) if doc]
    return Manifests({(doc["kind"], doc["metadata"]["name"]): doc for doc in docs})


@pytest.fixture(scope="module")
def k8s() -> Manifests:
    return load_manifests(K8S)


@pytest.fixture(scope="module")
def secret_example() -> dict:
    return yaml.safe_load((K8S / "secret.example.yaml").read_text())


#: the kinds that run the service's long-lived pods (the workers are a StatefulSet: stable member ids)
WORKLOADS = ("Deployment", "StatefulSet")


def pod_templates(k8s: Manifests) -> dict[str, dict]:
    return {name: doc["spec"]["template"] for (kind, name), doc in k8s.items() if kind in WORKLOADS + ("Job",)}


def container_of(k8s: Manifests, deployment: str) -> dict:
    [workload] = [doc for (kind, name), doc in k8s.items() if kind in WORKLOADS and name == deployment]
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return container


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
    assert roles["train"] == ["train", "--data", "/data"]
    assert roles["retrain"] == ["retrain-worker"]
    assert roles["drift-consumer"] == ["drift-consumer"]
    assert roles["http"] == ["serve", "--host", "0.0.0.0", "--port", str(HTTP_PORT)]
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
    for name in ("worker", "train", "retrain", "drift-consumer", "http"):
        needs = services[name]["depends_on"]
        for infra in ("kafka", "postgres", "redis"):
            assert needs[infra]["condition"] == "service_healthy", (name, infra)
        assert needs["init-db"]["condition"] == "service_completed_successfully"
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            if rule["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{name} waits on {dependency}'s healthcheck"


def test_a_fresh_compose_up_ends_with_a_worker_that_waits_for_a_model_then_serves(compose):
    """The worker waits (not ready) for a production model instead of exiting, so `unless-stopped` never
    loops it; its health check is its readiness; the model comes from the one-shot `train` service."""
    services = compose["services"]
    worker = services["worker"]
    assert worker["restart"] == "unless-stopped"
    assert READINESS_PATH in " ".join(worker["healthcheck"]["test"])
    train = services["train"]
    assert train["profiles"] == ["train"]  # not started by `docker compose up`; `docker compose run --rm train`
    assert train["restart"] == "no" and train["healthcheck"]["disable"] is True
    assert "/data:ro" in " ".join(train["volumes"])
    assert any(v.split(":")[1] == train["environment"]["RAKUTEN_MODEL_DIR"] for v in train["volumes"])
    header = COMPOSE.read_text().split("\nname:")[0]
    assert "docker compose run --rm train" in header and "Compose v2" in header
    assert header.index("docker compose up") < header.index("docker compose run --rm train")
    http = services["http"]
    assert f"{HTTP_PORT}:{HTTP_PORT}" in http["ports"]
    assert f":{HTTP_PORT}{READINESS_PATH}" in " ".join(http["healthcheck"]["test"])


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
    families = [*PrometheusObserver().registry.collect(), *RetrainMetrics().registry.collect(),
                *DriftMetrics().registry.collect()]
    for family in families:
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
#: the volume types the "restricted" Pod Security profile allows
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def restricted_profile_violations(pod: dict) -> list[str]:
    """What the Pod Security "restricted" profile (baseline + restricted controls) refuses in ``pod``."""
    spec, found = pod["spec"], []
    pod_context = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(f"{flag} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']}: {kinds - RESTRICTED_VOLUME_TYPES} not allowed")
    if pod_context.get("sysctls"):
        found.append("sysctls are set")
    for container in spec.get("initContainers", []) + spec["containers"]:
        name, context = container["name"], container.get("securityContext", {})
        effective = {**pod_context, **context}  # a container's setting wins over the pod's
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {capabilities['add']}")
        if effective.get("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if effective.get("runAsUser") == 0:
            found.append(f"{name}: runs as user 0")
        if effective.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile is not RuntimeDefault or Localhost")
        if any("hostPort" in port for port in container.get("ports", [])):
            found.append(f"{name}: hostPort")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
    return found


def test_every_manifest_is_valid_for_the_kubernetes_api(k8s, secret_example):
    core = [doc for (kind, _), doc in k8s.items() if not doc["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in core} >= {"ConfigMap", "Deployment", "Job", "Service", "PodDisruptionBudget",
                                         "PersistentVolumeClaim"}
    for doc in [*core, secret_example]:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # strict: unknown fields refused


def unknown_fields(given, validated) -> list[str]:
    """Paths of ``given`` that the model dropped (pydantic ignores unknown fields; the API server's strict
    field validation refuses them)."""
    if isinstance(given, dict):
        return [f"{key}{'.' + sub if sub else ''}" for key, value in given.items()
                for sub in ([""] if key not in validated else unknown_fields(value, validated[key]))
                if key not in validated or sub]
    if isinstance(given, list):
        return [f"[{i}].{sub}" for i, (g, v) in enumerate(zip(given, validated, strict=True))
                for sub in unknown_fields(g, v)]
    return []


def check_keda(doc: dict, model: type) -> None:
    """``doc`` against KEDA's CRD (the models of cloudcoil-models-keda are generated from it)."""
    validated = model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert unknown_fields(doc, validated) == [], f"{doc['kind']} {doc['metadata']['name']}: fields KEDA does not know"


def with_sasl_component(k8s: Manifests) -> Manifests:
    """The manifests as `components: [sasl]` makes them (its resources, and its JSON patch applied)."""
    folder = K8S / "sasl"
    component = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    result = Manifests(copy.deepcopy(dict(k8s)))
    for resource in component["resources"]:
        for doc in yaml.safe_load_all((folder / resource).read_text()):
            result[doc["kind"], doc["metadata"]["name"]] = doc
    for patch in component["patches"]:
        key = (patch["target"]["kind"], patch["target"]["name"])
        operations = yaml.safe_load((folder / patch["path"]).read_text())
        result[key] = jsonpatch.apply_patch(result[key], operations)
    return result


def test_the_keda_objects_are_valid_for_keda_with_and_without_sasl(k8s):
    check_keda(k8s.one("ScaledObject"), keda.ScaledObject)
    sasl = with_sasl_component(k8s)
    check_keda(sasl.one("ScaledObject"), keda.ScaledObject)
    check_keda(sasl.one("TriggerAuthentication"), keda.TriggerAuthentication)


def test_with_sasl_keda_authenticates_with_the_workers_own_credentials(k8s, secret_example):
    sasl = with_sasl_component(k8s)
    [trigger] = sasl.one("ScaledObject")["spec"]["triggers"]
    auth = sasl.one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert trigger["metadata"]["sasl"] in ("plaintext", "scram_sha256", "scram_sha512")
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert refs.keys() == {"username", "password"}
    for parameter, ref in refs.items():
        assert ref["name"] == secret_example["metadata"]["name"]
        assert ref["key"] == f"RAKUTEN_KAFKA_SASL_{parameter.upper()}"
        assert ref["key"] in setting_names()
    assert "authenticationRef" not in k8s.one("ScaledObject")["spec"]["triggers"][0]  # off by default


def test_every_pod_passes_the_restricted_pod_security_profile(k8s):
    templates = pod_templates(k8s)
    assert len(templates) >= 6
    for name, pod in templates.items():
        assert restricted_profile_violations(pod) == [], name


def test_the_restricted_check_refuses_what_the_profile_refuses(k8s):
    """The check above is not vacuous: each field the profile looks at, set wrong, is caught."""
    pod = pod_templates(k8s)["rakuten-worker"]
    breakages = {
        "allowPrivilegeEscalation": lambda p: p["spec"]["containers"][0]["securityContext"].pop(
            "allowPrivilegeEscalation"),
        "drop ALL": lambda p: p["spec"]["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
        "runAsNonRoot": lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"),
        "seccompProfile": lambda p: p["spec"]["securityContext"].pop("seccompProfile"),
        "hostPath": lambda p: p["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
        "privileged": lambda p: p["spec"]["containers"][0]["securityContext"].update(privileged=True),
    }
    for what, breakage in breakages.items():
        broken = copy.deepcopy(pod)
        breakage(broken)
        assert restricted_profile_violations(broken), what


def test_the_image_is_pinned_to_the_project_version_everywhere(k8s, compose, our_services):
    for name, pod in pod_templates(k8s).items():
        for container in pod["spec"]["containers"]:
            assert container["image"] == f"rakuten-stream:{VERSION}", name
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {i["name"]: i["newTag"] for i in kustomization["images"]} == {"rakuten-stream": VERSION}
    for name, service in our_services.items():
        assert service["image"] == f"rakuten-stream:${{RAKUTEN_IMAGE_TAG:-{VERSION}}}", name
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image!r} is not pinned by tag"


def test_the_workers_are_a_statefulset_whose_stable_pod_names_are_their_static_member_ids(k8s):
    """Defect 5: a Deployment's pod names change with every new pod, so a static id taken from them
    orphans the departed member's partitions; a StatefulSet's names come back with the pod."""
    deployment = k8s["StatefulSet", "rakuten-worker"]
    assert deployment["spec"]["serviceName"] == "rakuten-worker-metrics"
    assert k8s["Service", "rakuten-worker-metrics"]["spec"]["clusterIP"] == "None"
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(k8s, "rakuten-worker")
    check_subcommand(command_of(container["args"]), "k8s StatefulSet")
    assert command_of(container["args"]) == ["worker", "--no-migrate"]  # the migration Job migrates
    sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert sources == {k8s.one("ConfigMap")["metadata"]["name"], "rakuten-stream"}
    instance = next(e for e in container["env"] if e["name"] == "RAKUTEN_WORKER_INSTANCE_ID")
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert {p["containerPort"] for p in container["ports"]} == {METRICS_PORT}
    assert container["lifecycle"]["preStop"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert container["readinessProbe"]["httpGet"]["path"] == READINESS_PATH
    assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS_PATH


def test_the_schema_is_migrated_by_one_job_not_by_every_replica(k8s):
    [job] = k8s.of_kind("Job")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert command_of(container["args"]) == ["init-db"]
    check_subcommand(command_of(container["args"]), "k8s migration Job")
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    for name in pod_templates(k8s):
        if name != job["metadata"]["name"]:
            args = command_of(container_of(k8s, name)["args"])
            assert args[0] != "init-db" and (args[0] != "worker" or "--no-migrate" in args), name


def test_every_role_has_its_deployment_running_a_real_subcommand(k8s):
    roles = {name: command_of(container_of(k8s, name)["args"]) for (kind, name) in k8s if kind in WORKLOADS}
    assert {args[0] for args in roles.values()} == {"worker", "retrain-worker", "drift-consumer", "lag", "serve"}
    for name, args in roles.items():
        check_subcommand(args, f"k8s Deployment {name}")
    assert roles["rakuten-http"] == ["serve", "--host", "0.0.0.0", "--port", str(HTTP_PORT)]
    assert k8s["Deployment", "rakuten-retrain-worker"]["spec"]["strategy"]["type"] == "Recreate"


def test_the_retrain_worker_trains_on_the_database_not_on_a_data_folder(k8s, our_services):
    """It is handed no folder (no --data, no RAKUTEN_DATA_DIR): its rows are the database's labeled rows."""
    compose_env = our_services["retrain"].get("environment") or {}
    assert "--data" not in command_of(our_services["retrain"]["command"])
    assert "RAKUTEN_DATA_DIR" not in compose_env
    container = container_of(k8s, "rakuten-retrain-worker")
    assert "--data" not in command_of(container["args"])
    assert "RAKUTEN_DATA_DIR" not in {e["name"] for e in container.get("env", [])}


def test_services_and_disruption_budgets_select_their_pods(k8s):
    labels = {name: pod["metadata"]["labels"] for name, pod in pod_templates(k8s).items()}
    for kind in ("Service", "PodDisruptionBudget"):
        for doc in k8s.of_kind(kind):
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert [name for name, pod in labels.items() if selector.items() <= pod.items()], \
                f"{kind} {doc['metadata']['name']} selects no pod"
    budget = k8s["PodDisruptionBudget", "rakuten-worker"]["spec"]
    assert budget.get("maxUnavailable") == 1  # one rebalance at a time
    metrics = k8s["Service", "rakuten-worker-metrics"]
    assert [p["port"] for p in metrics["spec"]["ports"]] == [METRICS_PORT]


def test_keda_scales_on_the_lag_of_the_products_topic_up_to_the_partition_count(k8s):
    scaled, config = k8s.one("ScaledObject"), k8s.one("ConfigMap")["data"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "rakuten-worker"
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    # read from the worker container's environment: one place for the servers, the group and the topic
    assert trigger["metadata"]["bootstrapServersFromEnv"] == "RAKUTEN_KAFKA_BOOTSTRAP_SERVERS"
    assert trigger["metadata"]["consumerGroupFromEnv"] == "RAKUTEN_WORKER_GROUP_ID"
    assert trigger["metadata"]["topicFromEnv"] == "RAKUTEN_TOPIC_PRODUCTS"
    assert not {"bootstrapServers", "consumerGroup", "topic"} & trigger["metadata"].keys()
    assert {"RAKUTEN_KAFKA_BOOTSTRAP_SERVERS", "RAKUTEN_WORKER_GROUP_ID", "RAKUTEN_TOPIC_PRODUCTS"} <= config.keys()
    assert scaled["spec"]["scaleTargetRef"]["envSourceContainerName"] == container_of(k8s, "rakuten-worker")["name"]
    assert scaled["spec"]["maxReplicaCount"] == int(config["RAKUTEN_TOPIC_PARTITIONS"]) == 4


def test_k8s_settings_are_settings_the_service_reads(k8s, secret_example):
    keys = set(k8s.one("ConfigMap")["data"]) | set(secret_example["stringData"])
    for pod in pod_templates(k8s).values():
        for container in pod["spec"]["containers"]:
            keys |= {e["name"] for e in container.get("env", []) if e["name"].startswith("RAKUTEN_")}
    assert keys - setting_names() == set()


def test_the_image_runs_rakuten_stream_from_python_3_11_slim():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert 'ENTRYPOINT ["rakuten-stream"]' in dockerfile
    assert re.search(rf"^EXPOSE {METRICS_PORT} {HTTP_PORT}$", dockerfile, re.M)
    [user] = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER (runAsNonRoot checks it)"
    for pod in ("runAsUser", "runAsGroup"):
        assert re.search(rf"{pod}: {uid}\b", (K8S / "worker-statefulset.yaml").read_text())


def test_the_image_installs_the_torch_the_deep_extra_asks_for():
    """The image takes torch from a build index first (CPU by default): the same bound as the extra."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [torch] = [r for r in extras["deep"] if re.match(r"torch\b", r)]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'--index-url "${{TORCH_INDEX_URL}}" "{torch}"' in dockerfile
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
