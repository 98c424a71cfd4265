"""`python -m bench.profile` (`make profile`): where a proxied call's CPU goes, as py-spy sees it.

The cell profiled is the headline's: proxied Rerank calls of 20 documents (every query new, so
every call misses the cache and goes upstream; `--cache-off`: the cache off), C=32, one worker
with metrics on, the access log and tracing at their defaults, the mock gateway in a process of
its own. While the load runs, py-spy samples the server's process twice, one recording after
the other: once for the flame graph (`--format flamegraph`, SVG) and once for the raw collapsed
stacks, from which the top frames by self time are computed. Both record native frames too
(`--native`: grpc's C core, the JSON codecs, the interpreter's own work).

Writes to bench/results/: `profile.svg`, `profile.txt` (the collapsed stacks) and
`profile-top.txt` (frames by self time, and by time with children). py-spy attaches through
ptrace: on a machine that forbids it (a container without CAP_SYS_PTRACE, a Yama
`ptrace_scope` of 3) it says so and this stops with its message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from bench._services import Service, mock_gateway, run_json, v3_url
from bench.loadgen import CellConfig
from bench.run import API_KEY, CALL_TIMEOUT_S, RESULTS, _proxied_server_env
from tools import processes

DOCUMENTS = 20
CONCURRENCY = 32
#: Load before the first recording starts: connections made, caches of the code warm.
WARMUP_S = 2.0
#: Frames listed in each table of the top file.
TOP = 40
#: A frame of py-spy's collapsed stacks: `function (file:line)`; native ones may have no line.
_LINE = re.compile(r":\d+\)$")
#: Leaf frames of a thread that waits (the event loop's epoll, grpc's poller, the metrics
#: endpoint's thread): py-spy's native mode samples waiting threads too; they cost no CPU.
IDLE = frozenset(
    {
        "epoll_wait",
        "epoll_pwait",
        "poll",
        "ppoll",
        "select",
        "pselect",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "nanosleep",
        "clock_nanosleep",
        "sem_wait",
    }
)
#: Python frames that only wait, whatever native frame py-spy finds under them (an unnamed libc
#: address, under the metrics endpoint's `serve_forever`): a selector's `select`.
IDLE_CALLERS = frozenset(
    {"_PollLikeSelector.select", "EpollSelector.select", "SelectSelector.select"}
)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("bench.profile: py-spy not found: `make install` installs it (dev extra)")
    return found


async def _record(pid: int, seconds: float, rate: int, fmt: str, out: Path) -> None:
    command = [_py_spy(), "record", "--pid", str(pid), "--native", "--rate", str(rate)]
    command += ["--duration", str(int(seconds)), "--format", fmt, "--output", str(out)]
    finished = await processes.run(command, timeout=seconds + 120)
    if finished.returncode != 0:
        raise SystemExit(
            f"bench.profile: py-spy could not record the server (exit {finished.returncode}): "
            f"{(finished.stderr or finished.stdout).strip()}"
        )


def retitle(svg: str, title: str) -> str:
    """The flame graph with `title` for the command line py-spy writes as its title (which
    names this machine's paths)."""
    return re.sub(r'(<text id="title"[^>]*>)[^<]*(</text>)', rf"\g<1>{title}\g<2>", svg, count=1)


def top_frames(collapsed: str, top: int = TOP) -> str:
    """The frames of py-spy's collapsed stacks by self time (the stack's last frame) and by
    total time (anywhere in the stack, counted once per stack), lines merged per function;
    samples of a thread that waits (`IDLE`) left out."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", frame) for frame in stack.strip().split(";")]
        names = [frame.split(" (", 1)[0] for frame in frames]
        if names[-1] in IDLE or IDLE_CALLERS.intersection(names):
            idle += count
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count

    def table(title: str, counts: Counter[str]) -> list[str]:
        rows = [f"{title} ({samples} samples)", f"{'%':>6} {'samples':>8}  frame"]
        for frame, count in counts.most_common(top):
            rows.append(f"{100 * count / max(1, samples):6.2f} {count:8d}  {frame}")
        return rows

    waits = f"{idle} samples of waiting threads left out"
    return "\n".join([waits, "", *table("self time", own), "", *table("total time", total)]) + "\n"


async def _profile(out: Path, seconds: float, rate: int, cache: bool) -> dict[str, object]:
    svg, raw, top = out / "profile.svg", out / "profile.txt", out / "profile-top.txt"
    with contextlib.ExitStack() as stack:
        mock = stack.enter_context(mock_gateway(out / "profile-mock.log"))
        server = stack.enter_context(
            Service(
                "rerank server",
                "rerank.server",
                [
                    *("--workers", "1", "--metrics-port", "0"),
                    *("--host", "127.0.0.1", "--port", "0", "--gateway-url", v3_url(mock)),
                ],
                r"rerank server listening on (\S+:\d+)",
                out / "profile-server.log",
                env=_proxied_server_env(cache),
            )
        )
        config = CellConfig(
            path="proxied",
            target=server.address,
            documents=DOCUMENTS,
            concurrency=CONCURRENCY,
            warmup_s=WARMUP_S,
            duration_s=2 * seconds + 5,  # both recordings and py-spy's start-up
            max_calls=None,
            call_timeout_s=CALL_TIMEOUT_S,
            watch_pids={"server": server.pid, "mock": mock.pid},
            api_key=API_KEY,
        )
        bound = config.warmup_s + config.duration_s + 2 * CALL_TIMEOUT_S + 90
        load = asyncio.create_task(
            run_json(
                "bench.loadgen",
                json.dumps(asdict(config)),
                timeout=bound,
                what="the load generator",
            )
        )
        try:
            await asyncio.sleep(WARMUP_S + 1)
            await _record(server.pid, seconds, rate, "flamegraph", svg)
            title = f"make profile: proxied Rerank, {DOCUMENTS} documents, C={CONCURRENCY}, "
            title += f"py-spy record --native --rate {rate} --duration {int(seconds)}"
            svg.write_text(retitle(svg.read_text(), title))
            await _record(server.pid, seconds, rate, "raw", raw)
        except BaseException:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
            raise
        result = await load
    top.write_text(top_frames(raw.read_text()))
    return {"svg": svg, "raw": raw, "top": top, "cell": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each recording")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument(
        "--cache-off",
        action="store_true",
        help="the result cache off (RERANK_CACHE_MAX_BYTES=0) instead of on, every call a miss",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    found = asyncio.run(_profile(args.out, args.seconds, args.rate, not args.cache_off))
    cell = found["cell"]
    assert isinstance(cell, dict)
    print(
        f"bench.profile: proxied {DOCUMENTS} documents, C={CONCURRENCY}: "
        f"{cell['throughput']:.0f} calls/s while profiled, {cell['errors']} errors"
    )
    print(f"bench.profile: wrote {found['svg']}, {found['raw']}, {found['top']}")
    top = Path(str(found["top"])).read_text().splitlines()
    print("\n".join(top[: TOP // 2 + 2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
