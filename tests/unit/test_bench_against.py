"""`python -m bench --against REF`: its pure parts. The pairs' order, the median and quartiles
of their ratios, what a pair and a summary record, and how a REF that names nothing stops."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import against, report
from bench import run as bench_run


def test_pairs_alternate_which_server_runs_first() -> None:
    orders = [against.pair_order(number) for number in range(4)]
    assert orders == [
        (against.THIS, against.REF),
        (against.REF, against.THIS),
        (against.THIS, against.REF),
        (against.REF, against.THIS),
    ]


def test_median_and_interquartile_range_of_the_ratios() -> None:
    # Inclusive quartiles of 1..5 (any order) are the measured values 2 and 4.
    figure = against.spread([1.03, 1.01, 1.05, 1.02, 1.04])
    assert figure.median == pytest.approx(1.03)
    assert (figure.q1, figure.q3) == (pytest.approx(1.02), pytest.approx(1.04))
    assert figure.count == 5


def test_quartiles_of_an_even_count_interpolate_within_the_range() -> None:
    figure = against.spread([1.0, 2.0, 3.0, 4.0])
    assert (figure.q1, figure.median, figure.q3) == (1.75, 2.5, 3.25)


def test_one_pair_is_its_own_median_and_quartiles() -> None:
    assert against.spread([0.97]) == against.Spread(0.97, 0.97, 0.97, 1)


def test_no_ratio_has_no_median() -> None:
    with pytest.raises(ValueError, match="no ratios"):
        against.spread([])


def _run(cpu: float, throughput: float, p99: float, errors: int = 0) -> dict[str, Any]:
    return {
        "cpu_ms_per_call": {"server": cpu, "mock": 1.0},
        "throughput": throughput,
        "latency_ms": {"p99": p99},
        "errors": errors,
        "error_kinds": {"UNAVAILABLE": errors} if errors else {},
    }


def test_a_pair_gives_this_over_ref_of_each_figure() -> None:
    pair = against.pair_ratios(1, _run(1.1, 900.0, 50.0), _run(1.0, 1000.0, 40.0))
    assert pair["pair"] == 2
    assert pair["order"] == [against.REF, against.THIS]
    assert pair["ratios"] == {
        "cpu": pytest.approx(1.1),
        "throughput": pytest.approx(0.9),
        "p99": pytest.approx(1.25),
    }


def test_runs_with_errors_are_named_in_the_summary_and_its_printed_block() -> None:
    pairs = [
        against.pair_ratios(0, _run(1.0, 1000.0, 40.0), _run(1.0, 1000.0, 40.0)),
        against.pair_ratios(1, _run(1.0, 1000.0, 40.0), _run(1.0, 1000.0, 40.0, errors=3)),
    ]
    summary = against.summarize(pairs)
    assert summary["runs_with_errors"] == [{"pair": 2, "server": against.REF, "errors": 3}]
    assert "a run with errors" in report.against_pair_line(pairs[1])
    results = {
        "this": {"sha": "a" * 40, "uncommitted_changes": False},
        "ref": {"name": "main", "sha": "b" * 40},
        "cell": {"path": "proxied", "documents": 20, "concurrency": 32},
        "quartiles": against.QUARTILES,
        "pairs": pairs,
        "summary": summary,
    }
    block = report.against_summary(results)
    assert "ERRORS in 1 of 4 runs: pair 2 ref: 3" in block
    assert "miss path" in block


def _repository(root: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)

    git("init", "--quiet")
    (root / "file").write_text("x\n")
    git("add", "file")
    git("-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-qm", "one")
    git("tag", "first")


def test_a_tag_resolves_to_its_commit(tmp_path: Path) -> None:
    _repository(tmp_path)
    ref = against.resolve("first", root=tmp_path)
    assert len(ref.sha) == 40
    assert ref.short == ref.sha[:7]
    assert against.resolve("HEAD", root=tmp_path) == against.Ref("HEAD", ref.sha)


@pytest.mark.parametrize("name", ["no-such-branch", "-h", "HEAD~5"])
def test_a_ref_naming_no_commit_is_refused(tmp_path: Path, name: str) -> None:
    _repository(tmp_path)
    with pytest.raises(against.UnknownRefError, match="not a commit, tag or branch"):
        against.resolve(name, root=tmp_path)


def test_an_unknown_ref_stops_the_bench_with_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = bench_run.main(["--against", "no-such-ref-anywhere", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err == (
        "bench: --against no-such-ref-anywhere: not a commit, tag or branch of this repository\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--floor", "--against", "HEAD"], "--floor and --against each choose"),
        (["--floor", "--documents", "100"], "the bare proxy forwards 20 documents"),
        (["--pairs", "3"], "apply to --against and --floor only"),
    ],
)
def test_floor_arguments_that_cannot_be_measured_stop_with_usage(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench_run.main([*args, "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
