"""`--workers` by default: one per core, but no more than the container's CPU quota, read from a
cgroup folder (here a fake one: v2 `cpu.max`, v1 `cpu/cpu.cfs_quota_us` and `cfs_period_us`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rerank.server.__main__ import default_workers, settings_from

NODE_CORES = 64


@pytest.fixture(autouse=True)
def big_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that may run on 64 cores, whatever this machine has."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(NODE_CORES)))


def v2(folder: Path, text: str) -> Path:
    (folder / "cpu.max").write_text(text)
    return folder


def v1(folder: Path, quota: str, period: str) -> Path:
    (folder / "cpu").mkdir()
    (folder / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (folder / "cpu" / "cpu.cfs_period_us").write_text(period)
    return folder


@pytest.mark.parametrize(
    ("text", "workers"),
    [
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # 1.5 CPUs: rounded up
        ("50000 100000\n", 1),  # half a CPU: still one worker
        ("max 100000\n", NODE_CORES),  # no quota
        (f"{100000 * 1000} 100000\n", NODE_CORES),  # a quota above the cores
        ("not a quota\n", NODE_CORES),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path: Path, text: str, workers: int) -> None:
    assert default_workers(v2(tmp_path, text)) == workers


@pytest.mark.parametrize(
    ("quota", "period", "workers"),
    [("400000\n", "100000\n", 4), ("25000\n", "50000\n", 1), ("-1\n", "100000\n", NODE_CORES)],
)
def test_cgroup_v1_cfs_quota(tmp_path: Path, quota: str, period: str, workers: int) -> None:
    assert default_workers(v1(tmp_path, quota, period)) == workers


def test_no_cgroup_files_means_one_per_core(tmp_path: Path) -> None:
    assert default_workers(tmp_path) == NODE_CORES


def test_the_default_is_the_quota_of_the_mounted_cgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Path] = []
    monkeypatch.setattr(
        "rerank.server.__main__.default_workers", lambda cgroup: asked.append(cgroup) or 3
    )
    assert settings_from([], {}).workers == 3
    assert asked == [Path("/sys/fs/cgroup")]
    assert settings_from(["--workers", "5"], {}).workers == 5
