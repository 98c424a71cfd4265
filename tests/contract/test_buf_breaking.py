"""`buf breaking` (protos/buf.yaml: WIRE_JSON) catches a breaking change to rerank.v1 and lets an
additive one through: the check `make breaking` runs against the previous commit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, missing_tool

PROTO = Path("rerank/v1/rerank_service.proto")


def _buf() -> str:
    venv_buf = Path(sys.executable).parent / "buf"
    found = str(venv_buf) if venv_buf.exists() else shutil.which("buf")
    if found is None:
        missing_tool("buf is not installed (it comes with the dev extras: buf-bin)")
    return found


@pytest.fixture
def protos(tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of protos/ (the .proto files and buf.yaml): the original and one to edit."""
    ignore = shutil.ignore_patterns("*.py", "*.pyi", "__pycache__", "buf.gen.yaml")
    original = shutil.copytree(REPO_ROOT / "protos", tmp_path / "original", ignore=ignore)
    changed = shutil.copytree(REPO_ROOT / "protos", tmp_path / "changed", ignore=ignore)
    return original, changed


def edit(root: Path, old: str, new: str) -> None:
    path = root / PROTO
    text = path.read_text()
    assert text.count(old) == 1, f"the proto no longer contains {old!r}: update this test"
    path.write_text(text.replace(old, new))


def buf_breaking(changed: Path, original: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_buf(), "breaking", str(changed), "--against", str(original)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "BUF_CACHE_DIR": str(original.parent / "buf-cache")},
    )


@pytest.mark.parametrize(
    ("old", "new", "reported"),
    [
        pytest.param(
            "optional int32 top_n = 4;", "optional int32 top_n = 40;", "top_n", id="renumber"
        ),
        pytest.param(
            "  // For OTHER and DEPRECATED: the gateway's message. Empty otherwise.\n"
            "  string message = 4;\n",
            "",
            "message",
            id="remove",
        ),
        pytest.param(
            "string feature = 2;", "string feature_name = 2;", "feature", id="rename-json"
        ),
        pytest.param("double score = 2;", "float score = 2;", "score", id="retype"),
    ],
)
def test_a_breaking_change_fails(
    protos: tuple[Path, Path], old: str, new: str, reported: str
) -> None:
    original, changed = protos
    edit(changed, old, new)
    completed = buf_breaking(changed, original)
    assert completed.returncode != 0, completed.stdout + completed.stderr
    assert reported in completed.stdout, completed.stdout + completed.stderr


def test_an_additive_change_passes(protos: tuple[Path, Path]) -> None:
    original, changed = protos
    assert buf_breaking(changed, original).returncode == 0  # identical copies: no change at all
    edit(
        changed,
        "  optional bool return_documents = 7;\n}",
        "  optional bool return_documents = 7;\n\n"
        "  // Optional. A caller's label, for logs.\n"
        "  optional string label = 40;\n}",
    )
    completed = buf_breaking(changed, original)
    assert completed.returncode == 0, completed.stdout + completed.stderr
