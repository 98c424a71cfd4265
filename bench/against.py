"""`python -m bench --against REF`: this checkout's server against a build of REF.

What lives here: resolving REF to a commit, installing that commit into a virtualenv of its
own (kept for the next run, keyed by the commit), the order of the alternating pairs, and the
median and interquartile range of the pairs' ratios. `bench.run` starts the processes and runs
the pairs; `bench.report` writes what they measured.
"""

from __future__ import annotations

import math
import shutil
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: This checkout: the repository REF is looked up in, and the server compared with REF's.
CHECKOUT = Path(__file__).resolve().parent.parent
#: Bound on one git command.
GIT_TIMEOUT_S = 60.0
#: Bound on creating the virtualenv and on installing REF into it (downloads included).
INSTALL_TIMEOUT_S = 900.0
#: The two servers compared, as they are named in the figures.
THIS = "this"
REF = "ref"


class UnknownRefError(ValueError):
    """REF names no commit of the repository."""


@dataclass(frozen=True)
class Ref:
    """What REF resolved to: the name given, the commit, and its short form for file names."""

    name: str
    sha: str

    @property
    def short(self) -> str:
        return self.sha[:7]


def _git(*args: str, root: Path = CHECKOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )


def resolve(name: str, root: Path = CHECKOUT) -> Ref:
    """REF (a commit, tag or branch) as the commit it names; UnknownRefError if none."""
    # `--end-of-options`: a REF starting with "-" is a name to look up, never an option.
    found = _git(
        "rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}", root=root
    )
    sha = found.stdout.strip()
    if found.returncode != 0 or not sha:
        raise UnknownRefError(f"--against {name}: not a commit, tag or branch of this repository")
    return Ref(name, sha)


def describe_checkout(root: Path = CHECKOUT) -> dict[str, object]:
    """This checkout's commit, and whether its files differ from it (then they are measured)."""
    head = _git("rev-parse", "HEAD", root=root).stdout.strip()
    changed = bool(_git("status", "--porcelain", "--untracked-files=no", root=root).stdout.strip())
    return {"sha": head, "uncommitted_changes": changed}


def installed_python(ref: Ref, builds: Path, root: Path = CHECKOUT) -> Path:
    """The interpreter of a virtualenv with REF's package installed, built on first use.

    REF is checked out in a detached worktree under `builds` and installed from it, not
    editable, with the `server` extra (a commit from before that extra installs its base,
    which holds everything then: pip warns and goes on). The install is a copy, so the
    worktree is removed once it is done; a stamp written after a successful install lets the
    next run against the same commit reuse the virtualenv.
    """
    home = builds / ref.sha
    venv = home / "venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed-stamp"
    if stamp.exists() and python.exists():
        print(f"bench: reusing the build of {ref.short} in {venv}", flush=True)
        return python
    source = home / "src"
    _remove_worktree(source, root)
    shutil.rmtree(venv, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    print(f"bench: building {ref.name} ({ref.short}) in {venv}", flush=True)
    # --force: a worktree of an earlier run that was interrupted may still be registered.
    _checked(_git("worktree", "add", "--detach", "--force", str(source), ref.sha, root=root))
    try:
        _checked_run([sys.executable, "-m", "venv", str(venv)])
        _checked_run(
            [str(python), "-m", "pip", "install", "--quiet", f"{source}[server]"],
        )
    finally:
        _remove_worktree(source, root)
    stamp.write_text(ref.sha + "\n")
    return python


def _remove_worktree(source: Path, root: Path) -> None:
    if source.exists():
        _git("worktree", "remove", "--force", str(source), root=root)
        shutil.rmtree(source, ignore_errors=True)


def _checked(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(done.args)} failed ({done.returncode}):\n{done.stderr}")


def _checked_run(command: Sequence[str]) -> None:
    # subprocess.run kills this child (by its PID) if it overruns the bound.
    _checked(
        subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    )


def pair_order(number: int) -> tuple[str, str]:
    """Which server runs first in pair `number` (from 0): this one in even pairs, REF's in
    odd ones, so that a drift of the machine's load during a run falls on both alike."""
    return (THIS, REF) if number % 2 == 0 else (REF, THIS)


@dataclass(frozen=True)
class Spread:
    """The median of some ratios and their interquartile range."""

    median: float
    q1: float
    q3: float
    count: int


#: How the quartiles are computed, as the output says it.
QUARTILES = 'statistics.quantiles(ratios, n=4, method="inclusive")'


def spread(ratios: Sequence[float]) -> Spread:
    """Median and quartiles of `ratios` (see QUARTILES: with the inclusive method, the
    quartiles of n values interpolate between the measured ones, and stay within their range).
    A single ratio is its own median and quartiles."""
    if not ratios:
        raise ValueError("no ratios")
    if len(ratios) == 1:
        return Spread(ratios[0], ratios[0], ratios[0], 1)
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return Spread(median, q1, q3, len(ratios))


#: The figures compared, each as this ÷ REF: (key, what it is, how one run gives it).
FIGURES = (
    ("cpu", "server CPU per call", "server user+sys over the window ÷ calls answered"),
    ("throughput", "throughput", "calls answered ÷ the window"),
    ("p99", "p99 latency", "client-side, nearest rank"),
)


def _figures(run: Mapping[str, Any]) -> dict[str, float]:
    return {
        "cpu": run["cpu_ms_per_call"]["server"],
        "throughput": run["throughput"],
        "p99": run["latency_ms"]["p99"],
    }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def pair_ratios(number: int, this: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, Any]:
    """One pair's figures on each server, its ratios this ÷ REF, and the errors of each run."""
    mine, theirs = _figures(this), _figures(ref)
    return {
        "pair": number + 1,
        "order": list(pair_order(number)),
        THIS: mine | {"errors": this["errors"], "error_kinds": this["error_kinds"]},
        REF: theirs | {"errors": ref["errors"], "error_kinds": ref["error_kinds"]},
        "ratios": {key: _ratio(mine[key], theirs[key]) for key, _, _ in FIGURES},
    }


def summarize(pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The median and interquartile range of each figure's ratios over the pairs, and which
    runs had errors (pair number and server)."""
    summary: dict[str, Any] = {
        key: asdict(spread([pair["ratios"][key] for pair in pairs])) for key, _, _ in FIGURES
    }
    summary["runs_with_errors"] = [
        {"pair": pair["pair"], "server": side, "errors": pair[side]["errors"]}
        for pair in pairs
        for side in (THIS, REF)
        if pair[side]["errors"]
    ]
    return summary
