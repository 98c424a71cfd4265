"""The wheel as another team installs it: one import root, and nothing that works only because
the checkout's root happens to be on `sys.path`.

The wheel is built from this checkout and unpacked outside it; a fresh interpreter whose path
holds the unpacked wheel first (and not the checkout) imports every module in it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(300)

PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
OLD_TOP_LEVEL_NAMES = ("server", "client", "mock_gateway", "rerank_testing")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: setuptools comes with the dev install, so nothing is downloaded.
    subprocess.run(
        [*PIP_WHEEL, "-w", str(out), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = out.glob("rerank_service-*.whl")
    return built


def test_every_top_level_name_in_the_wheel_starts_with_rerank(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    importable = {name for name in top if not name.endswith((".dist-info", ".data"))}
    assert importable == {"rerank"}, importable
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(
            archive.read(n).decode() for n in archive.namelist() if n.endswith("entry_points.txt")
        )
    # The server's scripts start through the launcher that names a missing [server] extra.
    assert "rerank-server = rerank._extras:rerank_server" in entry_points
    assert "rerank-mock-gateway = rerank._extras:rerank_mock_gateway" in entry_points
    assert "rerank = rerank.client.cli:main" in entry_points
    assert "rerank = rerank.testing.plugin" in entry_points


def test_every_module_imports_from_the_unpacked_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    probe = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        import rerank
        names = ["rerank"] + [m.name for m in pkgutil.walk_packages(rerank.__path__, "rerank.")]
        files = {{}}
        for name in names:
            module = importlib.import_module(name)
            files[name] = getattr(module, "__file__", None)
        old = {{}}
        for name in {OLD_TOP_LEVEL_NAMES!r}:
            try:
                importlib.import_module(name)
                old[name] = "imported"
            except ModuleNotFoundError:
                old[name] = "absent"
        print(json.dumps({{"files": files, "old": old}}))
        """
    )
    # -P: no script directory or cwd on sys.path; cwd is outside the checkout anyway.
    completed = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    files: dict[str, str | None] = report["files"]
    for expected in ("rerank.server.app", "rerank.client.cli", "rerank.mock_gateway._app"):
        assert expected in files
    assert "rerank.testing.plugin" in files
    outside = {name: f for name, f in files.items() if f is None or not f.startswith(str(site))}
    assert outside == {}, outside
    assert set(report["old"].values()) == {"absent"}, report["old"]


def test_a_production_server_never_loads_the_mock_or_uvicorn(tmp_path: Path) -> None:
    probe = textwrap.dedent(
        """
        import json, sys
        import rerank.server.__main__, rerank.server.app, rerank.server.workers
        print(json.dumps(sorted(m for m in sys.modules
                                if m.split(".")[0] == "uvicorn" or m.startswith("rerank.mock"))))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(completed.stdout) == []
