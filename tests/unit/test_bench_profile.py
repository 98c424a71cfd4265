"""`make profile`'s table of frames (bench/profile.py's pure part): self and total time from
py-spy's collapsed stacks, lines merged per function, waiting threads left out."""

from __future__ import annotations

from bench.profile import retitle, top_frames

STACKS = """\
main (a.py:1);answer (b.py:10);encode (c.py:5) 6
main (a.py:1);answer (b.py:12);encode (c.py:7) 2
main (a.py:1);answer (b.py:11) 2
thread (t.py:3);poll (libc.so.6) 90
"""


def test_frames_are_ranked_by_self_and_by_total_time_without_waiting_threads() -> None:
    text = top_frames(STACKS)
    waits, self_table, total_table = text.rstrip("\n").split("\n\n")
    assert waits == "90 samples of waiting threads left out"
    self_rows = self_table.splitlines()
    assert self_rows[0] == "self time (10 samples)"
    assert self_rows[2].split() == ["80.00", "8", "encode", "(c.py)"]
    assert self_rows[3].split() == ["20.00", "2", "answer", "(b.py)"]
    assert len(self_rows) == 4
    totals = {" ".join(row.split()[2:]): row.split()[1] for row in total_table.splitlines()[2:]}
    assert totals == {"main (a.py)": "10", "answer (b.py)": "10", "encode (c.py)": "8"}


def test_the_flame_graph_is_retitled_without_the_command_line() -> None:
    svg = '<svg><text id="title" x="50%">/some/path/py-spy record --pid 7</text><text>x</text>'
    assert retitle(svg, "make profile") == (
        '<svg><text id="title" x="50%">make profile</text><text>x</text>'
    )


def test_a_thread_waiting_in_a_selector_is_left_out_whatever_native_frame_it_shows() -> None:
    stacks = STACKS + "serve (s.py:2);_PollLikeSelector.select (selectors.py:416);0x7f1 (libc) 5\n"
    assert top_frames(stacks).startswith("95 samples of waiting threads left out")
