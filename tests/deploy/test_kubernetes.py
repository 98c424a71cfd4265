"""deploy/kubernetes: every overlay renders and passes the API's schemas strictly, and what it
renders agrees with the server it runs: its settings read by the server's own parser, its
ports, probes, grace period and security held to them, its alerts and dashboard to the files
promtool and the dashboard tests check."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rerank.server.__main__ import settings_from
from rerank.server._config import Settings, fields, names
from rerank.v1 import rerank_service_pb2
from tests.conftest import REPO_ROOT
from tests.deploy.kustomize import OVERLAYS, Resource, one, render

SERVICE = rerank_service_pb2.DESCRIPTOR.services_by_name["RerankService"].full_name
CONTAINERFILE = (REPO_ROOT / "deploy" / "container" / "Containerfile").read_text()
#: Kubernetes releases the manifests must pass: the oldest still commonly run, and the newest.
VERSIONS = ("1.30", "1.37")
#: Custom resources, which have no schema in kubernetes-validate: held to their sources below.
CUSTOM_GROUPS = ("monitoring.coreos.com/",)
#: Time the kubelet leaves the process after the server's own drain and grace period: Python's
#: exit, the workers' reaping.
EXIT_MARGIN_SECONDS = 5
#: What the server listens on for the HTTP face (`RERANK_HTTP_PORT`), in the image and here.
HTTP_PORT = 8000


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def rendered(overlay: str) -> list[Resource]:
    return render(overlay)


@pytest.fixture(scope="module")
def deployment(rendered: list[Resource]) -> Resource:
    return one(rendered, "Deployment", "rerank-service")


@pytest.fixture(scope="module")
def container(deployment: Resource) -> Resource:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(found)


@pytest.fixture(scope="module")
def environment(rendered: list[Resource], container: Resource) -> dict[str, str]:
    """The container's environment as the server sees it: the settings ConfigMap, then `env`
    (a Secret's value stands in as a placeholder)."""
    (source,) = container["envFrom"]
    settings = one(rendered, "ConfigMap", source["configMapRef"]["name"])
    found = dict(settings["data"])
    for variable in container.get("env", []):
        found[variable["name"]] = variable.get("value", "from-a-secret")
    return found


@pytest.fixture(scope="module")
def settings(environment: Mapping[str, str]) -> Settings:
    """The settings the server starts with in that environment (the callers file is a
    Secret's, not here: it has its own tests)."""
    readable = {k: v for k, v in environment.items() if k != "RERANK_CALLERS_FILE"}
    return settings_from([], readable)


def test_every_overlay_renders_one_server_deployment(rendered: list[Resource]) -> None:
    assert one(rendered, "Deployment", "rerank-service")
    assert one(rendered, "Service", "rerank-service")
    assert one(rendered, "ServiceAccount", "rerank-service")


def schema_problems(resources: list[Resource], version: str) -> list[str]:
    """What `kubernetes-validate --strict` finds wrong for Kubernetes `version`: an unknown or
    missing field, and, where the tool only warns, a kind of a built-in API group it has no
    schema for (a typo, a removed version). Custom resources have none: they are let through."""
    problems = []
    for resource in resources:
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        try:
            kubernetes_validate.validate(dict(resource), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            if not resource["apiVersion"].startswith(CUSTOM_GROUPS):
                problems.append(f"couldn't find schema for {name} ({resource['apiVersion']})")
    return problems


@pytest.mark.parametrize("version", VERSIONS)
def test_the_api_schemas_pass_it_strictly(rendered: list[Resource], version: str) -> None:
    assert schema_problems(rendered, version) == []
    custom = {r["kind"] for r in rendered if r["apiVersion"].startswith(CUSTOM_GROUPS)}
    assert custom <= {"ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_removed_api_version_or_an_unknown_field_is_a_problem(version: str) -> None:
    metadata = {"name": "x"}
    removed = {"apiVersion": "extensions/v1beta1", "kind": "Deployment", "metadata": metadata}
    unknown = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata, "typo": 1}
    custom = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor"}
    problems = schema_problems([removed, unknown, {**custom, "metadata": metadata}], version)
    assert len(problems) == 2, problems
    assert problems[0].startswith("couldn't find schema for Deployment/x"), problems


def test_production_runs_replicas_with_redis_a_budget_and_an_autoscaler() -> None:
    rendered = render("production")
    deployment = one(rendered, "Deployment", "rerank-service")
    assert deployment["spec"]["replicas"] == 3
    hpa = one(rendered, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    budget = one(rendered, "PodDisruptionBudget")
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pods.items()
    assert budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    redis = one(rendered, "Service", "rerank-redis")
    (redis_port,) = redis["spec"]["ports"]
    environment = one(rendered, "ConfigMap", "rerank-settings")["data"]
    assert environment["RERANK_REDIS_URL"].startswith(
        f"redis://{redis['metadata']['name']}:{redis_port['port']}/"
    )
    policies = {p["metadata"]["name"] for p in rendered if p["kind"] == "NetworkPolicy"}
    assert policies == {"rerank-service", "rerank-redis"}


def test_dev_answers_from_the_embedded_mock_with_no_secret() -> None:
    rendered = render("dev")
    assert not [r for r in rendered if r["kind"] == "Secret"]
    pod = one(rendered, "Deployment", "rerank-service")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "secretKeyRef" not in json.dumps(container)
    assert not [v for v in pod["volumes"] if "secret" in v]


def test_every_rerank_variable_set_is_a_setting(environment: Mapping[str, str]) -> None:
    """A renamed setting cannot linger here, ignored."""
    variables = {names(name).env for name in fields()} | {
        "RERANK_AUTH_TOKENS",
        "RERANK_AUTH_TOKENS_FILE",
        "RERANK_OIDC_TOKEN_FILE",
    }
    # RERANK_HTTP_PORT is for a server with an HTTP face; one without it ignores the variable.
    ahead = set() if "http_port" in fields() else {"RERANK_HTTP_PORT"}
    set_here = {k for k in environment if k.startswith("RERANK_")} - ahead
    assert set_here <= variables, set_here - variables


@pytest.mark.skipif("http_port" not in fields(), reason="the server has no HTTP face setting")
def test_the_http_port_is_the_servers_setting(environment: Mapping[str, str]) -> None:
    assert names("http_port").env == "RERANK_HTTP_PORT"
    assert int(environment["RERANK_HTTP_PORT"]) == HTTP_PORT


def test_ports_are_the_servers_and_the_images(
    container: Resource, settings: Settings, environment: Mapping[str, str]
) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": settings.port,
        "http": int(environment["RERANK_HTTP_PORT"]),
        "metrics": settings.metrics_port,
    }
    assert settings.host == "0.0.0.0"  # the kubelet and the Service reach the pod's address
    exposed = re.search(r"^EXPOSE (.+)$", CONTAINERFILE, re.MULTILINE)
    assert exposed is not None
    assert sorted(map(int, exposed.group(1).split())) == sorted(ports.values())
    for variable in ("RERANK_PORT", "RERANK_HTTP_PORT", "RERANK_METRICS_PORT", "RERANK_HOST"):
        assert f"{variable}={environment[variable]}" in CONTAINERFILE, variable


def test_the_service_is_headless_on_the_containers_ports(
    rendered: list[Resource], container: Resource
) -> None:
    """Headless: callers' round robin (the shipped service config) sees every pod."""
    service = one(rendered, "Service", "rerank-service")
    assert service["spec"]["clusterIP"] == "None"
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in named
        assert port["port"] == named[port["targetPort"]]


def probes(container: Resource) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        yield kind, container[kind]


def test_probes_are_grpc_health_checks_on_the_servers_port(
    container: Resource, settings: Settings
) -> None:
    """The kubelet's probe sends no token and no certificate: health is open and plaintext."""
    for kind, probe in probes(container):
        assert probe["grpc"]["port"] == settings.port, kind
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE
    assert container["startupProbe"]["grpc"]["service"] == SERVICE
    assert not settings.auth_health
    assert settings.tls_cert_file is None


def test_readiness_turns_within_the_drain(container: Resource, settings: Settings) -> None:
    """At SIGTERM health says NOT_SERVING and calls are still served for the drain delay: the
    readiness probe must see it, and the pod leave the endpoints, before the listener closes."""
    probe = container["readinessProbe"]
    noticed = probe["periodSeconds"] * probe["failureThreshold"] + probe["timeoutSeconds"]
    assert noticed < settings.drain_delay


def test_the_grace_period_covers_the_drain_and_the_servers_own(
    deployment: Resource, settings: Settings
) -> None:
    needed = settings.drain_delay + settings.grace_period + EXIT_MARGIN_SECONDS
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed


def test_a_stopping_pod_is_not_restarted_by_its_liveness_probe(
    container: Resource, settings: Settings
) -> None:
    """Health is NOT_SERVING from SIGTERM to the exit: liveness must outlast it."""
    probe = container["livenessProbe"]
    tolerated = probe["periodSeconds"] * probe["failureThreshold"]
    assert tolerated > settings.drain_delay + settings.grace_period


def test_the_security_context_is_restricted_and_the_images_user(
    deployment: Resource, container: Resource
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    user = re.search(r"^USER (\d+):(\d+)$", CONTAINERFILE, re.MULTILINE)
    assert user is not None, "the image's USER must be numeric (runAsNonRoot checks it)"
    assert pod["securityContext"]["runAsUser"] == int(user.group(1)) != 0
    assert pod["securityContext"]["runAsGroup"] == int(user.group(2))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}


def test_the_one_place_the_server_writes_is_an_empty_dir(
    deployment: Resource, container: Resource, environment: Mapping[str, str]
) -> None:
    """Metrics files (one per worker) go to a fresh folder under Python's temporary folder."""
    temporary = environment.get("TMPDIR", "/tmp")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == temporary]
    assert "emptyDir" in volumes[mount["name"]]
    assert not mount.get("readOnly", False)


def test_resources_are_requested_and_limited(rendered: list[Resource]) -> None:
    for workload in (r for r in rendered if r["kind"] in ("Deployment", "StatefulSet")):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), container["name"]
            assert "memory" in resources["limits"], container["name"]


def test_workers_follow_the_cpu_limit(container: Resource, environment: Mapping[str, str]) -> None:
    """No --workers and no RERANK_WORKERS: the server runs one worker per CPU of the limit,
    its cgroup's quota (`default_workers`), whatever the node's cores."""
    assert "RERANK_WORKERS" not in environment
    assert "args" not in container
    assert "cpu" in container["resources"]["limits"]


def test_the_prometheus_rule_is_the_tested_rule_file() -> None:
    rule = one(render("production"), "PrometheusRule")
    tested = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == tested["groups"], (
        "components/monitoring/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
        "copy the file's groups into the rule's spec.groups"
    )


def test_the_service_monitor_scrapes_the_metrics_port() -> None:
    rendered = render("production")
    monitor = one(rendered, "ServiceMonitor")
    service = one(rendered, "Service", "rerank-service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"


def test_the_dashboard_config_map_is_the_dashboard() -> None:
    dashboard = one(render("production"), "ConfigMap", "rerank-grafana-dashboard")
    (text,) = dashboard["data"].values()
    assert text == (REPO_ROOT / "deploy" / "grafana" / "rerank-service.json").read_text(), (
        "components/monitoring/rerank-service.json differs from deploy/grafana's: copy it"
    )


@pytest.mark.parametrize("name", ["port", "drain_delay", "grace_period"])
def test_the_timings_and_port_set_are_the_servers_defaults(settings: Settings, name: str) -> None:
    """The manifests spell these out for the operator to see; they are the server's own
    defaults, which the grace period and the probes above were sized for."""
    assert getattr(settings, name) == fields()[name].default
