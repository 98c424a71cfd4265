"""A plain `pip install rerank-service`, as another team gets it: no extras.

One fresh virtual environment per session, the wheel built from this checkout installed into it
without extras (pip takes the four base packages from the package registry, through its cache),
with the dev install's pytest beside it as a team's own. In it: the client and the CLI work,
none of the server's dependencies is there, the server's scripts say in one line which extra
they need, and a team's suite runs with the plugin registered, its kit fixtures failing in one
line naming `rerank-service[testing]`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

pytestmark = [pytest.mark.install, pytest.mark.timeout(600)]

SERVER_ONLY = {"aiohttp", "uvicorn", "hiredis", "opentelemetry-sdk", "prometheus-client"}
"""Distributions of [server] that a plain install must not bring."""

BASE = {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos"}


@dataclass(frozen=True)
class Venv:
    bin: Path
    env: dict[str, str]

    def run(self, *argv: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def plain(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("plain-install")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    bin_dir = root / "venv" / "bin"
    # Nothing of this checkout or of the dev install may leak in; pip's own settings (an index,
    # a proxy) and its cache under HOME are kept.
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} and not name.startswith("PYTEST")
    }
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    venv = Venv(bin_dir, env)
    # The team's pytest: the dev install's release, which pip's cache already holds.
    installed = venv.run(
        "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        str(wheel),
        f"pytest=={version('pytest')}",
        cwd=root,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    return venv


def test_a_plain_install_holds_the_client_and_none_of_the_servers_dependencies(
    plain: Venv, tmp_path: Path
) -> None:
    probe = textwrap.dedent(
        """
        import json
        from importlib.metadata import distributions
        import rerank.client, rerank.client.cli, rerank.contract, rerank.v1.rerank_service_pb2_grpc
        print(json.dumps([d.metadata["Name"] for d in distributions()]))
        """
    )
    completed = plain.run("python", "-c", probe, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    installed = {canonicalize_name(name) for name in json.loads(completed.stdout)}
    assert installed >= BASE | {"rerank-service"}
    assert installed & SERVER_ONLY == set()
    assert not any(name.startswith("opentelemetry") for name in installed), installed


def test_the_cli_runs(plain: Venv, tmp_path: Path) -> None:
    completed = plain.run("rerank", "--help", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: rerank ")


@pytest.mark.parametrize("script", ["rerank-server", "rerank-mock-gateway"])
def test_a_server_script_says_in_one_line_that_it_needs_the_server_extra(
    plain: Venv, tmp_path: Path, script: str
) -> None:
    completed = plain.run(script, "--help", cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert re.fullmatch(
        rf"{script}: error: this command needs rerank-service\[server\] "
        r"\(pip install 'rerank-service\[server\]'\): No module named '[\w.]+'\n",
        completed.stderr,
    ), completed.stderr


def test_the_kits_classes_name_the_testing_extra(plain: Venv, tmp_path: Path) -> None:
    completed = plain.run(
        "python", "-c", "from rerank.testing import MockGatewayServer", cwd=tmp_path
    )
    assert completed.returncode == 1
    assert completed.stderr.splitlines()[-1].startswith(
        "ModuleNotFoundError: rerank.testing.MockGatewayServer needs rerank-service[testing] "
    )


@pytest.fixture
def team(tmp_path: Path) -> Path:
    """Another team's project: its own ini (so its own rootdir) and one test of its own."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_theirs.py").write_text("def test_their_own():\n    assert 1 + 1 == 2\n")
    return tmp_path


def test_another_teams_suite_runs_with_the_plugin_registered(plain: Venv, team: Path) -> None:
    completed = plain.run("pytest", "-p", "no:cacheprovider", cwd=team)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert re.search(r"^plugins: .*\brerank-service-", completed.stdout, re.MULTILINE)
    assert "1 passed" in completed.stdout


def test_a_kit_fixture_without_the_testing_extra_fails_in_one_line(plain: Venv, team: Path) -> None:
    (team / "test_kit.py").write_text("def test_kit(rerank_client):\n    pass\n")
    completed = plain.run("pytest", "-p", "no:cacheprovider", cwd=team)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    report = completed.stdout.splitlines()
    assert "1 passed, 1 error" in report[-1], report[-1]
    # The ERRORS section: its header, then the one line, then the summary.
    start = next(i for i, line in enumerate(report) if "ERROR at setup of test_kit" in line)
    end = next(i for i, line in enumerate(report) if "short test summary info" in line)
    (line,) = report[start + 1 : end]
    assert re.fullmatch(
        r"the rerank\.testing fixtures need rerank-service\[testing\] "
        r"\(pip install 'rerank-service\[testing\]'\): No module named '[\w.]+'",
        line,
    ), line
