"""`rerank.server`'s public face: a few names, each from a private module, imported on first
use, so that importing the package loads nothing else (the server's `__main__` chooses
prometheus-client's storage before anything imports the library)."""

from __future__ import annotations

import subprocess
import sys

import rerank.server
from tests.conftest import REPO_ROOT


def test_every_public_name_resolves_and_is_listed() -> None:
    assert sorted(rerank.server.__all__) == sorted(rerank.server._PUBLIC)
    for name in rerank.server.__all__:
        value = getattr(rerank.server, name)
        assert value.__module__.startswith("rerank.server._"), (name, value.__module__)


def test_importing_the_package_loads_none_of_its_modules() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, rerank.server; "
            "print(sorted(m for m in sys.modules if m.startswith('rerank.server.')))",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
