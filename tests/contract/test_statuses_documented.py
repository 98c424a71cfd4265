"""The proto says everything a caller can get back: each RPC's comment lists every status with
its ErrorInfo reason that the server's one table (`rerank.server._status`) can answer, and no
other; each `ErrorReason` value names the status it comes with."""

from __future__ import annotations

import re

import grpc
import pytest

from rerank.server import _errors as errors
from rerank.server._status import status_code_for
from rerank.v1 import rerank_service_pb2 as pb
from tests.conftest import REPO_ROOT

PROTO = (REPO_ROOT / "protos/rerank/v1/rerank_service.proto").read_text()
RPCS = list(pb.DESCRIPTOR.services_by_name["RerankService"].methods_by_name)
# `// - CODE (REASON, REASON): why` or `// - CODE, no ErrorInfo: why`.
BULLET = re.compile(r"^\s*// - ([A-Z_]+)(?: \(([A-Z_, ]+)\))?(, no ErrorInfo)?:", re.MULTILINE)
#: The statuses gRPC or the way to the server answer without our ErrorInfo, and that every RPC
#: must name (INTERNAL: a bug's incident id).
WITHOUT_REASON = {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "CANCELLED"}
#: What each RPC can meet besides the reasons every call can (a malformed message, the call
#: limit, authentication): Rerank all of the gateway's and a named caller's limits; ListModels
#: the gateway's; GetUsage the standing of a named caller only; BatchRerank, as a whole call, a
#: batch too large (each request's own failure is Rerank's, in its result).
EVERY_CALL = {"MALFORMED_REQUEST", "OVERLOADED", "UNAUTHENTICATED"}
CALLER_LIMITS = {"MODEL_NOT_ALLOWED", "CALLER_RATE_LIMITED", "CALLER_BUDGET_EXHAUSTED"}
STANDING = {"NOT_A_NAMED_CALLER", "LIMITS_UNAVAILABLE"}


def rpc_comment(name: str) -> str:
    """The comment block right above `rpc NAME(`."""
    lines = PROTO[: PROTO.index(f"  rpc {name}(")].splitlines()
    block: list[str] = []
    for line in reversed(lines):
        if not line.strip().startswith("//"):
            break
        block.append(line)
    return "\n".join(reversed(block))


def documented(name: str) -> tuple[set[tuple[str, str]], set[str]]:
    """(status, reason) pairs the RPC's comment lists, and the statuses it lists without one."""
    pairs: set[tuple[str, str]] = set()
    bare: set[str] = set()
    for code, reasons, no_info in BULLET.findall(rpc_comment(name)):
        assert code == "OK" or code in grpc.StatusCode.__members__, code
        if no_info:
            bare.add(code)
        elif reasons:
            pairs.update((code, reason.strip()) for reason in reasons.split(","))
    return pairs, bare


def an_error(cls: type[errors.RerankError]) -> errors.RerankError:
    if issubclass(cls, errors.InvalidRequest):
        return cls([errors.FieldViolation("query", "must not be empty")])
    if issubclass(cls, errors.CallerRefused):
        return cls("x", caller="a-caller")
    return cls("x")


def table() -> set[tuple[str, str]]:
    """Every (status, reason) the server answers, from its one table: each class raised (the
    bases that say no reason of their own are never raised themselves)."""
    return {
        (status_code_for(an_error(cls)).name, cls.reason)
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.RerankError) and "reason" in vars(cls)
    }


def answered_by(rpc: str) -> set[tuple[str, str]]:
    """The rows of the table `rpc` can answer with."""
    upstream = {r for _, r in table()} - EVERY_CALL - CALLER_LIMITS - STANDING
    reasons = {
        "Rerank": upstream | EVERY_CALL | CALLER_LIMITS | {"LIMITS_UNAVAILABLE"},
        "ListModels": upstream | EVERY_CALL,
        "GetUsage": EVERY_CALL | STANDING,
        # The whole call's own: a request's failure is in its result, and is Rerank's.
        "BatchRerank": EVERY_CALL | {"INVALID_REQUEST"},
    }[rpc]
    return {(code, reason) for code, reason in table() if reason in reasons}


def test_each_rpc_is_placed() -> None:
    """A new RPC must say what it answers (in `answered_by`), and every row is some RPC's."""
    assert set(RPCS) == {"Rerank", "ListModels", "GetUsage", "BatchRerank"}
    assert set().union(*(answered_by(rpc) for rpc in RPCS)) == table()


@pytest.mark.parametrize("rpc", RPCS)
def test_every_status_an_rpc_answers_is_listed_and_nothing_else(rpc: str) -> None:
    pairs, bare = documented(rpc)
    assert answered_by(rpc) - pairs == set(), f"{rpc}'s comment misses these"
    assert pairs - answered_by(rpc) == set(), f"{rpc}'s comment lists what it never answers"
    assert bare == WITHOUT_REASON


def test_the_bullets_are_read_at_all() -> None:
    """The parser is not vacuous: a list with a row taken out is caught."""
    pairs, _ = documented("Rerank")
    assert ("RESOURCE_EXHAUSTED", "OVERLOADED") in pairs
    assert len(pairs) == len(answered_by("Rerank")) > 15


@pytest.mark.parametrize(
    "value",
    [v for v in pb.ErrorReason.values() if v != pb.ErrorReason.ERROR_REASON_UNSPECIFIED],
    ids=pb.ErrorReason.Name,
)
def test_each_reason_names_its_status(value: int) -> None:
    """`// CODE: why ...` opens the comment of each value."""
    name = pb.ErrorReason.Name(value)
    block: list[str] = []
    for line in reversed(PROTO[: PROTO.index(f"  {name} = ")].splitlines()):
        if not line.strip().startswith("//"):
            break
        block.append(line.strip())
    assert block, f"{name} has no comment"
    code = block[-1].removeprefix("// ").split(":", 1)[0]
    assert (code, name.removeprefix("ERROR_REASON_")) in table(), block[-1]
