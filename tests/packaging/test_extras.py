"""Which install holds which module: the base (client, CLI, contract), [server], [testing].

Read from the sources and from `pyproject.toml` in the dev install, which has every extra: the
modules each folder imports are those its install provides, `rerank._extras` names exactly the
modules of the [server] extra's distributions, and a console script without its extra says so
in one line while any other missing module keeps its traceback.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterable
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rerank._extras import EXTRA_MODULES, launch
from tests.conftest import REPO_ROOT

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
PACKAGE_DIRS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"
]


def _modules_of(requirements: Iterable[str]) -> set[str]:
    """The top-level modules the named distributions (installed here) provide."""
    names = {canonicalize_name(Requirement(line).name) for line in requirements}
    return {
        module
        for module, distributions in packages_distributions().items()
        if names & {canonicalize_name(d) for d in distributions}
    }


def _imported_by(folder: Path) -> set[str]:
    """Every top-level module a folder's Python files import by absolute name, anywhere in
    them (functions and TYPE_CHECKING blocks too), other than the standard library's and ours."""
    found: set[str] = set()
    for path in folder.glob("*.py"):
        if path.name.endswith("_connect.py"):
            continue  # the contract's Connect module: the server's (test below)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", "rerank"}


BASE_MODULES = _modules_of(PROJECT["dependencies"])
SERVER_MODULES = _modules_of(PROJECT["optional-dependencies"]["server"])


def test_the_launcher_names_exactly_the_server_extras_modules() -> None:
    assert EXTRA_MODULES["server"] == SERVER_MODULES - BASE_MODULES
    assert EXTRA_MODULES["testing"] == EXTRA_MODULES["server"]


PROVIDED_TO = {
    "rerank": BASE_MODULES,
    "rerank.v1": BASE_MODULES,
    "rerank.client": BASE_MODULES,
    "rerank.server": BASE_MODULES | SERVER_MODULES,
    "rerank.mock_gateway": BASE_MODULES | SERVER_MODULES,
    # pytest is the consuming suite's own; pytest-asyncio is optional (imported if there).
    "rerank.testing": BASE_MODULES | SERVER_MODULES | {"pytest", "pytest_asyncio"},
}
"""Package → the modules its install provides: the base, or the base and [server]."""


@pytest.mark.parametrize("package", PROVIDED_TO)
def test_each_package_imports_only_what_its_install_provides(package: str) -> None:
    folder = REPO_ROOT / (PACKAGE_DIRS.get(package) or PACKAGE_DIRS["rerank"] + "/v1")
    assert _imported_by(folder) - PROVIDED_TO[package] == set()


def test_the_connect_module_imports_only_what_the_server_extra_provides() -> None:
    imported = _imported_by_file(
        REPO_ROOT / PACKAGE_DIRS["rerank"] / "v1/rerank_service_connect.py"
    )
    assert imported - BASE_MODULES - SERVER_MODULES == set()


def _imported_by_file(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", "rerank"}


def _module_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> str:
    """A module importable as the returned name whose import fails for want of `missing`."""
    (tmp_path / "main_needing_it.py").write_text(
        f"import {missing}\n\ndef main() -> int:\n    return 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, missing, raising=False)
    monkeypatch.setitem(sys.modules, missing, None)  # None in sys.modules: not importable
    return "main_needing_it"


def test_a_missing_module_of_the_extra_is_one_line_and_status_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = _module_missing(tmp_path, monkeypatch, "aiohttp")
    assert launch("rerank-server", "server", module) == 2
    assert capsys.readouterr().err == (
        "rerank-server: error: this command needs rerank-service[server] "
        "(pip install 'rerank-service[server]'): import of aiohttp halted; None in sys.modules\n"
    )


def test_any_other_missing_module_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _module_missing(tmp_path, monkeypatch, "not_an_extras_module")
    with pytest.raises(ModuleNotFoundError, match="not_an_extras_module"):
        launch("rerank-server", "server", module)
    with pytest.raises(ModuleNotFoundError, match=r"rerank\.server\.no_such_module"):
        launch("rerank-server", "server", "rerank.server.no_such_module")
