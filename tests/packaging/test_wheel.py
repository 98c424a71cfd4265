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
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

pytestmark = pytest.mark.timeout(300)

OLD_TOP_LEVEL_NAMES = ("server", "client", "mock_gateway", "rerank_testing")


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
    for expected in ("rerank.server._app", "rerank.client.cli", "rerank.mock_gateway._app"):
        assert expected in files
    assert "rerank.testing.plugin" in files
    outside = {name: f for name, f in files.items() if f is None or not f.startswith(str(site))}
    assert outside == {}, outside
    assert set(report["old"].values()) == {"absent"}, report["old"]


def test_a_production_server_never_loads_the_mock_or_uvicorn(tmp_path: Path) -> None:
    probe = textwrap.dedent(
        """
        import json, sys
        import rerank.server.__main__, rerank.server._app, rerank.server._workers
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


BASE_REQUIREMENTS = {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos"}
"""What the client, the CLI and the contract import: all a plain install brings."""


def _extra_of(marker: Marker | None) -> str | None:
    """The extra a requirement belongs to (None: the base), from its `extra == "..."` marker."""
    if marker is None:
        return None
    (extra,) = (
        name
        for name in ("server", "testing", "dev")
        if marker.evaluate({"extra": name}) and not marker.evaluate({"extra": ""})
    )
    return extra


def test_the_base_is_four_ranges_and_the_extras_add_the_rest(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        text = next(
            archive.read(n).decode()
            for n in archive.namelist()
            if n.endswith(".dist-info/METADATA")
        )
    metadata = Parser().parsestr(text, headersonly=True)
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]
    by_extra: dict[str | None, list[Requirement]] = {}
    for requirement in requirements:
        by_extra.setdefault(_extra_of(requirement.marker), []).append(requirement)

    assert {r.name for r in by_extra[None]} == BASE_REQUIREMENTS
    assert {"server", "testing", "dev"} <= set(metadata.get_all("Provides-Extra") or [])
    assert [(r.name, r.extras) for r in by_extra["testing"]] == [("rerank-service", {"server"})]
    # What other teams install is a range (a lower and an upper bound), never one release;
    # exact pins are for this repository's own tools (dev).
    installed_elsewhere = [*by_extra[None], *by_extra["server"]]
    for requirement in installed_elsewhere:
        operators = {spec.operator for spec in requirement.specifier}
        assert not operators & {"==", "==="}, str(requirement)
        assert operators & {">=", "~="}, f"no lower bound: {requirement}"
        assert operators & {"<", "~="}, f"no upper bound: {requirement}"
