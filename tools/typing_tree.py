"""Link the import layout that `pyproject.toml` declares into a tree mypy can read.

setuptools maps folders onto import names (`server/` is `rerank.server`, ...) in
`[tool.setuptools] package-dir`. The wheel and the editable install honour that table, but mypy
does not follow the editable install's import hook, so it would see `server` where Python sees
`rerank.server`. This script builds `.venv/typing/` from the same table: a directory per package
that has mapped children, a symbolic link for every other entry. It writes nothing else and
needs nothing outside the standard library. `make typecheck` runs it, then mypy on that tree.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path


def build(root: Path, tree: Path) -> list[str]:
    """Build `tree` from `root`'s pyproject.toml; return the top-level package names."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = config["package-dir"]
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    names = sorted(package_dir, key=lambda name: name.count("."))
    for name in names:
        source = (root / package_dir[name]).resolve()
        target = tree.joinpath(*name.split("."))
        children = {other for other in names if other.startswith(name + ".")}
        if not children:
            target.symlink_to(source, target_is_directory=True)
            continue
        target.mkdir()
        mapped = {child.split(".")[name.count(".") + 1] for child in children}
        for entry in source.iterdir():
            if entry.name not in mapped and entry.name != "__pycache__":
                (target / entry.name).symlink_to(entry.resolve())
    return sorted({name.split(".")[0] for name in names})


if __name__ == "__main__":
    project = Path(__file__).resolve().parent.parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else project / ".venv" / "typing"
    print(" ".join(build(project, out.resolve())))
