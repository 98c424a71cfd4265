"""Admission: calls and the memory they hold, counted on arrival, refused at once when full."""

from __future__ import annotations

import pytest

from rerank.server._admission import HELD_PER_REQUEST_BYTE, Admission
from rerank.server._errors import Overloaded


def test_a_call_counts_what_it_holds_not_its_requests_bytes() -> None:
    admission = Admission(max_calls=10, max_bytes=1000)
    with admission.admit(100):
        assert admission.bytes == 100 * HELD_PER_REQUEST_BYTE
        assert admission.calls == 1
    assert (admission.bytes, admission.calls) == (0, 0)


def test_calls_whose_memory_would_pass_the_limit_are_refused() -> None:
    request = 100
    admission = Admission(max_calls=10, max_bytes=2 * request * HELD_PER_REQUEST_BYTE)
    with (
        admission.admit(request),
        admission.admit(request),
        pytest.raises(Overloaded, match="bytes held by calls in flight"),
        admission.admit(1),
    ):
        pass
    with admission.admit(request):  # room again once they end
        pass


def test_a_call_heavier_than_the_limit_runs_alone() -> None:
    """Or it could never run: memory is then bounded by that one call."""
    admission = Admission(max_calls=10, max_bytes=1000)
    with admission.admit(10_000), pytest.raises(Overloaded), admission.admit(1):
        pass
    with admission.admit(1), pytest.raises(Overloaded), admission.admit(10_000):
        pass


def test_calls_beyond_the_call_limit_are_refused() -> None:
    admission = Admission(max_calls=1, max_bytes=10**9)
    with (
        admission.admit(0),
        pytest.raises(Overloaded, match="1 concurrent calls"),
        admission.admit(0),
    ):
        pass


def test_a_batch_holds_its_bytes_and_its_requests_take_call_places() -> None:
    """A BatchRerank counts its bytes once (`hold`) and each request in flight takes a call
    place (`admit(0)`): the places are limited, the bytes are not counted twice."""
    admission = Admission(max_calls=2, max_bytes=1000)
    with admission.hold(100):
        assert (admission.bytes, admission.calls) == (100 * HELD_PER_REQUEST_BYTE, 0)
        with admission.admit(0), admission.admit(0):
            assert (admission.bytes, admission.calls) == (100 * HELD_PER_REQUEST_BYTE, 2)
            with pytest.raises(Overloaded, match="concurrent calls"), admission.admit(0):
                pass
    assert (admission.bytes, admission.calls) == (0, 0)


def test_a_batch_is_refused_whole_when_its_bytes_find_no_room() -> None:
    admission = Admission(max_calls=10, max_bytes=100 * HELD_PER_REQUEST_BYTE)
    with (
        admission.admit(60),
        pytest.raises(Overloaded, match="bytes held"),
        admission.hold(60),
    ):
        pass


def test_the_requests_of_a_batch_heavier_than_the_limit_still_run() -> None:
    """The batch runs alone, as a heavy Rerank does; its requests add no bytes, so the bytes
    limit it is over cannot refuse them, nor a ListModels meanwhile."""
    admission = Admission(max_calls=10, max_bytes=1000)
    with admission.hold(10_000), admission.admit(0), admission.admit(0):
        assert admission.calls == 2
        with pytest.raises(Overloaded, match="bytes held"), admission.admit(1):
            pass
