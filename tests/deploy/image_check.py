"""`make image-test`: the image, built with no registry (`make image-local`) and run with podman
on loopback, serves, drains and stops as the manifests expect, as a non-root user on a
read-only root filesystem, and no layer holds the build's pip configuration or CA bundle.

Not a `test_*.py` file, so `make test` does not collect it (the build adds 3–4 minutes);
`make image-test` names it. It runs under pytest for the suite's own launcher, waits and
`missing_tool`: without buildah, podman or debootstrap it skips with one line, and fails under
CI, where `.ci/run` installs them. podman runs with the `runc` runtime and no default ulimits
(a containers.conf given through CONTAINERS_CONF): in a sandbox without cgroups of its own crun
cannot start, and a container cannot raise `nofile` or `nproc`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rerank.v1 import rerank_service_pb2
from tests.conftest import REPO_ROOT, SEED_DOCUMENTS, SEED_QUERY, missing_tool
from tests.deploy.kustomize import render
from tools.processes import Process
from tools.waiting import until


def _build_script() -> Any:
    """deploy/container/build.py, which says what the build hands pip (not a package)."""
    spec = importlib.util.spec_from_file_location(
        "image_build", REPO_ROOT / "deploy" / "container" / "build.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.timeout(900)

TAG = "localhost/rerank-service:image-test"
LOCAL_BASE = "localhost/rerank-base:bookworm"
SERVICE = rerank_service_pb2.DESCRIPTOR.services_by_name["RerankService"].full_name
TOOLS = ("buildah", "podman", "debootstrap", "runc", "catatonit")
INSTALL_HINT = "apt-get install buildah podman runc debootstrap catatonit (.ci/run does)"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
DRAIN_DELAY = 2.0
GRACE_PERIOD = 3.0
#: What the image may add to its base: the virtualenv with the [server] extra is about 60 MB.
MAX_ADDED_BYTES = 100_000_000
#: The image's user (deploy/container/Containerfile's USER), which the manifests run as too.
USER = 10001


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def command(args: list[str], env: Mapping[str, str], timeout: float = 120) -> str:
    """Run a short command to its end; its stdout, or a failure naming its stderr."""
    run = subprocess.run(
        args, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert run.returncode == 0, f"{' '.join(args)} exited {run.returncode}: {run.stderr}"
    return run.stdout


@pytest.fixture(scope="module")
def environ(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """This process's environment, with podman's configuration for this sandbox."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        missing_tool(f"{', '.join(missing)} not found: {INSTALL_HINT}")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def image(environ: dict[str, str]) -> Iterator[str]:
    """`make image-local` under a tag of the test's own, removed at the end (the base is kept
    for the next run: making it takes minutes). One left by an interrupted run goes first, so
    that it does not linger untagged."""
    subprocess.run(
        ["podman", "rmi", "--force", TAG], env=environ, capture_output=True, timeout=60, check=False
    )
    run = subprocess.run(
        ["make", "-C", str(REPO_ROOT), "image-local", f"IMAGE={TAG}"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert run.returncode == 0, f"make image-local:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    yield TAG
    command(["podman", "rmi", "--force", TAG], environ)


def inspect(name: str, environ: Mapping[str, str]) -> dict[str, Any]:
    (found,) = json.loads(command(["podman", "image", "inspect", name], environ))
    return dict(found)


class Container:
    """The image run with podman on the host's loopback, as the manifests run it: read-only
    root, a writable /tmp, the ports given by the environment."""

    def __init__(self, image: str, environ: dict[str, str], **settings: str) -> None:
        self.name = f"rerank-image-test-{time.monotonic_ns()}"
        self.environ = environ
        self.http_port = free_port()
        variables = {
            "RERANK_HOST": "127.0.0.1",
            "RERANK_PORT": "0",
            "RERANK_METRICS_PORT": "0",
            "RERANK_HTTP_PORT": str(self.http_port),
            "RERANK_WORKERS": "2",
            **settings,
        }
        args = ["podman", "run", "--rm", "--name", self.name, "--network", "host"]
        args += ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777"]
        for key, value in variables.items():
            args += ["--env", f"{key}={value}"]
        self.process = Process([*args, image], env=environ)
        self.port = int(self.process.wait_for(r"rerank server listening on [\d.]+:(\d+)")[1])
        self.metrics = self.process.wait_for(r"rerank metrics on (\S+)")[1]

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", "exec", self.name, *args],
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def health(self, service: str) -> int:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            check = health_pb2.HealthCheckRequest(service=service)
            status: int = health_pb2_grpc.HealthStub(channel).Check(check, timeout=5).status
            return status

    def stop(self) -> None:
        subprocess.run(
            ["podman", "rm", "--force", "--time", "5", self.name],
            env=self.environ,
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.process.stop()


@pytest.fixture(scope="module")
def container(image: str, environ: dict[str, str]) -> Iterator[Container]:
    running = Container(image, environ)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_is_serving(container: Container, service: str) -> None:
    assert container.health(service) == health_pb2.HealthCheckResponse.SERVING


def test_the_images_cli_ranks_the_seed_example(container: Container) -> None:
    """The `rerank` command the image ships, against the server beside it."""
    run = container.exec(
        "rerank", "--target", f"127.0.0.1:{container.port}", SEED_QUERY, *SEED_DOCUMENTS
    )
    assert run.returncode == 0, run.stderr
    ranking = json.loads(run.stdout)["ranking"]
    assert ranking[0]["originalIndex"] == 0, run.stdout
    assert ranking[0]["document"] == SEED_DOCUMENTS[0]


def test_the_http_face_answers_health(container: Container) -> None:
    curl = shutil.which("curl")
    if curl is None:
        missing_tool("curl not found: apt-get install curl")
    url = f"http://127.0.0.1:{container.http_port}/healthz"
    run = subprocess.run(
        [curl, "--silent", "--output", "/dev/null", "--write-out", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.stdout == "200", f"GET {url}: curl exit {run.returncode}, status {run.stdout}"


def test_metrics_are_scraped(container: Container) -> None:
    with urllib.request.urlopen(container.metrics, timeout=10) as answer:
        text = answer.read().decode()
    assert re.search(r'^rerank_build_info\{.*version="', text, re.MULTILINE), text[:2000]


def test_it_runs_as_a_non_root_user_on_a_read_only_root(container: Container) -> None:
    status = container.exec("cat", "/proc/1/status")
    assert status.returncode == 0, status.stderr
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status.stdout, re.MULTILINE)
    assert uids is not None
    assert {int(uids[1]), int(uids[2])} == {USER}
    mounts = container.exec("cat", "/proc/1/mounts")
    root = next(line.split() for line in mounts.stdout.splitlines() if line.split()[1] == "/")
    assert "ro" in root[3].split(","), root
    # And it wrote nowhere but /tmp: its metrics files are there.
    listed = container.exec("ls", "/tmp")
    assert re.search(r"^rerank-metrics-", listed.stdout, re.MULTILINE), listed.stdout


def test_the_images_metadata(image: str, environ: dict[str, str]) -> None:
    config = inspect(image, environ)["Config"]
    assert config["User"] == f"{USER}:{USER}"
    assert config["Entrypoint"] == ["rerank-server"]
    assert set(config["ExposedPorts"]) == {"50051/tcp", "8000/tcp", "9464/tcp"}
    assert "Healthcheck" not in config or not config["Healthcheck"]
    labels = config["Labels"]
    for label in ("source", "version", "licenses", "revision"):
        assert labels.get(f"org.opencontainers.image.{label}"), label
    assert "RERANK_HOST=0.0.0.0" in config["Env"]


def test_the_layers_above_the_base_are_at_most_100_mb(image: str, environ: dict[str, str]) -> None:
    """The virtualenv with the [server] extra: about 60 MB (docs/deploying.md, "Size")."""
    added = inspect(image, environ)["Size"] - inspect(LOCAL_BASE, environ)["Size"]
    print(f"layers above the base: {added / 1e6:.1f} MB")
    assert 0 < added <= MAX_ADDED_BYTES, f"{added / 1e6:.1f} MB"


def test_sigterm_drains_then_exits_0_within_the_grace_period(
    image: str, environ: dict[str, str]
) -> None:
    stopping = Container(
        image,
        environ,
        RERANK_DRAIN_DELAY=str(DRAIN_DELAY),
        RERANK_GRACE_PERIOD=str(GRACE_PERIOD),
    )
    try:
        assert stopping.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
        command(["podman", "kill", "--signal", "TERM", stopping.name], environ)
        signalled = time.monotonic()
        until(  # polling the health check: the server announces nothing to a client
            lambda: stopping.health(SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING,
            "health NOT_SERVING during the drain",
            timeout=DRAIN_DELAY,
        )
        code = stopping.process.wait(timeout=DRAIN_DELAY + GRACE_PERIOD + 10)
        took = time.monotonic() - signalled
        assert code == 0, stopping.process.output
        assert took < DRAIN_DELAY + GRACE_PERIOD + 5, took
        stopping.process.wait_for(r"draining: health is NOT_SERVING", timeout=1)
    finally:
        stopping.stop()


def saved_layers(image: str, environ: Mapping[str, str], into: Path) -> list[tarfile.TarFile]:
    """The image's layers above its base, from `podman image save`."""
    archive = into / "image.tar"
    save = ["podman", "image", "save", "--format", "docker-archive", "-o", str(archive), image]
    command(save, environ, timeout=300)
    with tarfile.open(archive) as outer:
        outer.extractall(into, filter="data")
    (manifest,) = json.loads((into / "manifest.json").read_text())
    base_layers = len(inspect(LOCAL_BASE, environ)["RootFS"]["Layers"])
    above = manifest["Layers"][base_layers:]
    assert above, "no layer above the base"
    return [tarfile.open(into / layer) for layer in above]


def test_no_layer_holds_the_pip_configuration_or_the_ca_bundle(
    image: str, environ: dict[str, str], tmp_path: Path
) -> None:
    build = _build_script()
    settings = build.pip_settings(sys.executable)
    bundle = build.ca_bundle(settings, environ)
    secrets = [build.pip_conf(settings, bundle is not None).encode()]
    if bundle is not None:
        secrets.append(bundle.read_bytes())
    digests = {hashlib.sha256(secret).hexdigest() for secret in secrets}
    sizes = {len(secret) for secret in secrets}
    # Hosts a pip setting names (an index, a proxy) appear in no file and no history line.
    hosts = {
        found.encode()
        for value in settings.values()
        for found in re.findall(r"://(?:[^@/\s]*@)?([^:/\s]+)", value)
        if found not in ("", "localhost")
    }
    history = command(
        ["podman", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image], environ
    )
    assert "--mount=type=secret,id=pip.conf" in history  # the build did use the secrets
    for host in hosts:
        assert host.decode() not in history, host
    scanned = 0
    for layer in saved_layers(image, environ, tmp_path):
        with layer:
            for member in layer:
                name = member.name.lstrip("./")
                assert not name.startswith("run/secrets/"), name
                assert Path(name).name != "pip.conf", name
                if not member.isfile():
                    continue
                data = layer.extractfile(member)
                assert data is not None
                content = data.read()
                scanned += 1
                if len(content) in sizes:
                    assert hashlib.sha256(content).hexdigest() not in digests, name
                for host in hosts:
                    assert host not in content, (name, host)
    assert scanned > 1000, scanned  # the venv was read


def test_podman_kube_play_runs_the_dev_overlay(
    image: str, environ: dict[str, str], tmp_path: Path
) -> None:
    """The dev overlay's rendered output, run as a pod by `podman kube play`: its settings from
    its ConfigMap, its security context, its mock gateway. Only two things are changed: the
    image is the one built here, and each container port is published on a free loopback port
    of the host (`hostIP`, `hostPort`) rather than on every interface."""
    resources = render("dev")
    published: dict[str, int] = {}
    for resource in resources:
        if resource["kind"] != "Deployment":
            continue
        (container,) = resource["spec"]["template"]["spec"]["containers"]
        container["image"] = image
        for port in container["ports"]:
            published[port["name"]] = port["hostPort"] = free_port()
            port["hostIP"] = "127.0.0.1"
    played = tmp_path / "dev.yaml"
    played.write_text(yaml.safe_dump_all(resources))
    command(["podman", "kube", "play", str(played)], environ)
    try:

        def health() -> int:
            with grpc.insecure_channel(f"127.0.0.1:{published['grpc']}") as channel:
                check = health_pb2.HealthCheckRequest(service=SERVICE)
                try:
                    status: int = health_pb2_grpc.HealthStub(channel).Check(check, timeout=2).status
                except grpc.RpcError:
                    return -1
                return status

        until(
            lambda: health() == health_pb2.HealthCheckResponse.SERVING,
            "the kube play pod's health SERVING",
            timeout=60,
        )
        names = command(["podman", "ps", "--format", "{{.Names}}"], environ).split()
        (name,) = [n for n in names if n.startswith("rerank-service-dev-pod-")]
        settings = json.loads(command(["podman", "inspect", name], environ))[0]
        assert settings["HostConfig"]["ReadonlyRootfs"] is True
        assert settings["Config"]["User"].split(":")[0] == str(USER)
        logs = subprocess.run(
            ["podman", "logs", name],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # the server logs on stderr
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert "answering from the bundled deterministic mock gateway" in logs
    finally:
        command(["podman", "kube", "down", str(played)], environ)
