"""The processes under test, on the shared launcher (tools/processes.py): started, ready on
their line, stopped by PID."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tools import processes

READY_TIMEOUT_S = 30.0


class Service(processes.Process):
    """One child process, `PYTHON -m MODULE ARGS`, once it has printed its ready line: `address`
    is that line's first group; its stderr is in `log`.

    `python` is this interpreter unless given: another one runs another build of the code
    (`python -m bench --against REF` runs a server installed in a virtualenv of its own).
    Use as a context manager, which stops it.
    """

    def __init__(
        self,
        name: str,
        module: str,
        args: Sequence[str],
        ready: str,
        log: Path,
        env: Mapping[str, str] | None = None,
        python: str | Path = sys.executable,
    ) -> None:
        with log.open("wb") as stderr:
            super().__init__([python, "-m", module, *args], env=env, stderr=stderr)
        self.name = name
        try:
            self.address = self.wait_for(ready, timeout=READY_TIMEOUT_S).group(1)
        except BaseException as error:
            error.add_note(f"{name}: its stderr is in {log.name}")
            self.stop()
            raise


def mock_gateway(log: Path) -> Service:
    """The mock gateway, on a free loopback port; `v3_url` is the base URL to send it."""
    return Service(
        "mock gateway",
        "rerank.mock_gateway",
        ["--host", "127.0.0.1", "--port", "0", "--log-level", "warning"],
        # The ready line names the v4 base URL; keep its origin (host and port).
        r"mock gateway listening on (http://\S+)/v4/ai",
        log,
    )


def v3_url(mock: Service) -> str:
    # v3, served on the same port: the workload (bench/_workload.py) and the server's gateway
    # adapter both send specification version 3.
    return f"{mock.address}/v3/ai"


async def run_json(
    module: str,
    *args: str,
    timeout: float,
    what: str,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Run `python -m MODULE ARGS` to its end and return the JSON it prints: a measurement
    in a process of its own, with `env` over this one's environment. Bounded: killed if it
    overruns `timeout` seconds; its stderr is in the error when it fails. `what` names it in
    those errors."""
    try:
        finished = await processes.run(
            [sys.executable, "-m", module, *args], timeout=timeout, env=env
        )
    except TimeoutError:
        raise RuntimeError(f"{what} overran {timeout:.0f} s") from None
    if finished.returncode != 0:
        raise RuntimeError(f"{what} failed ({finished.returncode}):\n{finished.stderr}")
    return json.loads(finished.stdout)
