"""MkDocs hook: the reference tables, made while the site builds, each from its one source.

A page asks for a table with a line of its own, `<!-- reference: NAME -->`, which the hook
replaces before the page is rendered; an unknown NAME stops the build. Nothing generated is
committed, so there is nothing to keep in step by hand:

- `settings`: the settings model (`tools/settings_table.py`'s `table()`);
- `errors` and `bare-statuses`: the server's status table (`rerank.server._status`) with the
  proto's `ErrorReason` comments, the RPCs' lists of statuses and the gateway's error types;
- `protocols`: what differs between the gateway protocol versions
  (`rerank.server._gateway.PROTOCOL_FACTS`);
- `metrics`: the registered metric families (`rerank.server._metric_families`);
- `faults`: the mock gateway's fault table (`rerank.mock_gateway._faults`);
- `mock-versions`: the protocol versions the mock serves (`rerank.mock_gateway._versions`);
- `contract`: the whole proto, from its comments (`proto_reference`).

`make docs` runs MkDocs as `python -m mkdocs`, so the checkout's root (and `tools`) imports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import proto_reference
from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!-- reference: ([a-z-]+) -->$", re.MULTILINE)
# `- CODE (REASON, REASON): why` or `- CODE, no ErrorInfo: why`, in an RPC's comment.
_STATUS_BULLET = re.compile(r"^- ([A-Z_]+)(?: \(([A-Z_, ]+)\))?(, no ErrorInfo)?:\s", re.MULTILINE)
_REASON_PREFIX = "ERROR_REASON_"


def settings_table() -> str:
    from tools.settings_table import table

    return table()


def _returned_by() -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """From the RPCs' comments: which RPCs list each reason, and each RPC's statuses that carry
    no ErrorInfo, with why."""
    reasons: dict[str, list[str]] = {}
    bare: dict[str, dict[str, str]] = {}
    for rpc, text in proto_reference.rpc_comments(proto_reference.compile_proto()):
        for bullet in re.split(r"\n(?=- )", text):
            found = _STATUS_BULLET.match(bullet)
            if not found:
                continue
            code, listed, no_info = found.groups()
            why = " ".join(bullet[found.end() :].split("\n\n")[0].split())
            if no_info:
                bare.setdefault(code, {})[rpc] = why
            for reason in (listed or "").split(","):
                if reason.strip() and rpc not in reasons.setdefault(reason.strip(), []):
                    reasons[reason.strip()].append(rpc)
    return reasons, bare


def client_raises(code: Any, reason: str | None) -> str:
    """The exception the Python client raises for `code` with `reason` (`from_status`, the
    client's own mapping)."""
    from google.rpc import code_pb2, error_details_pb2, status_pb2

    from rerank.client import from_status
    from rerank.contract import ERROR_DOMAIN

    status = status_pb2.Status(code=getattr(code_pb2, code.name), message="")
    if reason is not None:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
        status.details.add().Pack(info)
    return f"`{type(from_status(status)).__name__}`"


def errors_table() -> str:
    """One row per error the server raises: its `ErrorReason`, the status `_status.py` gives
    it, what the proto says it means, the gateway error types that become it, the RPCs whose
    comment lists it, and what the Python client raises for it."""
    from rerank.server._status import STATUS_BY_ERROR

    meaning = {
        name: comment
        for name, _, comment in proto_reference.enum_values(
            proto_reference.compile_proto(), "ErrorReason"
        )
    }
    rpcs, _ = _returned_by()
    gateway_types = _gateway_error_types()
    rows = [
        "| reason (`ErrorInfo.reason`) | status | meaning | gateway `error.type` | returned by "
        "| Python client raises |",
        "|---|---|---|---|---|---|",
    ]
    for error, code in STATUS_BY_ERROR.items():
        if "reason" not in vars(error):
            continue  # a base that is never raised itself
        reason = error.reason
        value = _REASON_PREFIX + reason
        if value not in meaning:
            raise PluginError(f"{error.__name__}'s reason {reason!r} is not an ErrorReason value")
        said = meaning[value].split(": ", 1)[-1]
        listed = ", ".join(rpcs.get(reason, [])) or "—"
        types = ", ".join(gateway_types.get(error, [])) or "—"
        raises = client_raises(code, reason)
        rows.append(f"| `{reason}` | `{code.name}` | {said} | {types} | {listed} | {raises} |")
    return "\n".join(rows)


def _gateway_error_types() -> dict[type, list[str]]:
    """Each error class, with the gateway `error.type`s that become it (`PROTOCOL_FACTS`);
    a type one protocol version only has is marked with it."""
    from rerank.server._gateway import PROTOCOL_FACTS

    versions = {
        error_type: [
            str(v.value) for v, facts in PROTOCOL_FACTS.items() if error_type in facts.error_types
        ]
        for facts in PROTOCOL_FACTS.values()
        for error_type in facts.error_types
    }
    found: dict[type, list[str]] = {}
    for facts in PROTOCOL_FACTS.values():
        for error_type, error in facts.error_types.items():
            only = (
                ""
                if len(versions[error_type]) == len(PROTOCOL_FACTS)
                else f" ({versions[error_type][0]} only)"
            )
            shown = f"`{error_type}`{only}"
            if shown not in found.setdefault(error, []):
                found[error].append(shown)
    return found


def protocols_table() -> str:
    """What differs between the gateway protocol versions: `PROTOCOL_FACTS`, the one table."""
    from rerank.server._gateway import PROTOCOL_FACTS

    versions = list(PROTOCOL_FACTS.items())
    head = " | ".join(str(v.value) for v, _ in versions)
    rows = [f"| | {head} |", "|---|" + "---|" * len(versions)]

    def cells(values: list[str]) -> str:
        return " | ".join(values)

    rows.append(
        "| `ai-reranking-model-specification-version` | "
        + cells([f"`{f.specification_version}`" for _, f in versions])
        + " |"
    )
    rows.append(
        "| warning types | "
        + cells([", ".join(f"`{t}`" for t in sorted(f.warning_types)) for _, f in versions])
        + " |"
    )
    rows.append(
        "| error types (`error.type`) | "
        + cells([", ".join(f"`{t}`" for t in f.error_types) for _, f in versions])
        + " |"
    )
    return "\n".join(rows)


def mock_versions_table() -> str:
    """The protocol versions the mock gateway serves (`PROTOCOL_VERSIONS`), one row each."""
    from rerank.mock_gateway._versions import PROTOCOL_VERSIONS

    rows = [
        "| base URL | `ai-reranking-model-specification-version` | `/config` "
        "`specificationVersion` | warning types | error types |",
        "|---|---|---|---|---|",
    ]
    for version in PROTOCOL_VERSIONS.values():
        warnings = ", ".join(f"`{t}`" for t in version.warning_types)
        errors = ", ".join(f"`{t}`" for t in version.error_types)
        rows.append(
            f"| `http://HOST:PORT{version.base_path}` | `{version.specification_version}` "
            f'| `"{version.config_specification_version}"` | {warnings} | {errors} |'
        )
    return "\n".join(rows)


def bare_statuses_table() -> str:
    """The statuses that come without an ErrorInfo (from gRPC itself, or a bug's incident id),
    as the RPCs' comments list them."""
    import grpc

    _, bare = _returned_by()
    rows = ["| status | when | RPCs | Python client raises |", "|---|---|---|---|"]
    for code, by_rpc in bare.items():
        whys: dict[str, list[str]] = {}
        for rpc, why in by_rpc.items():
            whys.setdefault(why, []).append(rpc)
        for why, listed in whys.items():
            raises = client_raises(grpc.StatusCode[code], None)
            rows.append(f"| `{code}` | {why} | {', '.join(listed)} | {raises} |")
    return "\n".join(rows)


def _shown_name(family: Any) -> str:
    from rerank.server import _metric_families as families

    name = families.COST_SHOWN if family is families.COST else family.name
    return f"{name}_total" if family.kind == "counter" else name


def metrics_table() -> str:
    """Every family the server registers: its name as a scrape shows it, kind, labels, help."""
    from rerank.server._metric_families import FAMILIES

    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for family in FAMILIES:
        labels = ", ".join(f"`{label}`" for label in family.labels)
        rows.append(f"| `{_shown_name(family)}` | {family.kind} | {labels} | {family.help} |")
    return "\n".join(rows)


def _fault_descriptions() -> dict[str, str]:
    """Each fault's description from `_faults`' docstring, whose table is the
    ``name``-then-text list the module starts with."""
    from rerank.mock_gateway import _faults

    found: dict[str, str] = {}
    current = None
    for line in (_faults.__doc__ or "").splitlines():
        entry = re.match(r"^``(\w+)``\s+(.*)$", line)
        if entry:
            current = entry.group(1)
            found[current] = entry.group(2)
        elif current and line.startswith(" " * 8) and line.strip():
            found[current] += " " + line.strip()
        else:
            current = None
    return {name: text.replace("``", "`") for name, text in found.items()}


def faults_table() -> str:
    """Every fault of the mock gateway: its parameters (those it requires first) and what it
    answers; then the parameters every fault takes, and the variants of those that have them."""
    from rerank.mock_gateway import _faults
    from rerank.mock_gateway._malformed import MALFORMED_VARIANTS

    described = _fault_descriptions()
    rows = ["| `fault` | parameters | what the mock answers |", "|---|---|---|"]
    for name, kind in _faults._FAULTS.items():
        if name not in described:
            raise PluginError(f"the mock's fault {name!r} has no description in _faults")
        params = [f"`{p}` (required)" for p in kind.required]
        params += [f"`{p}`" for p in kind.params if p not in kind.required]
        rows.append(f"| `{name}` | {', '.join(params) or '—'} | {described[name]} |")
    common = ", ".join(f"`{p}`" for p in _faults._COMMON)
    variants = {
        "malformed": MALFORMED_VARIANTS,
        "drop": _faults.DROP_VARIANTS,
    }
    lines = [*rows, "", f"Every fault also takes {common}.", ""]
    for name, names in variants.items():
        lines.append(f"- `{name}` variants: " + ", ".join(f"`{v}`" for v in names))
    return "\n".join(lines)


TABLES: Mapping[str, Callable[[], str]] = {
    "settings": settings_table,
    "errors": errors_table,
    "bare-statuses": bare_statuses_table,
    "protocols": protocols_table,
    "metrics": metrics_table,
    "faults": faults_table,
    "mock-versions": mock_versions_table,
    "contract": proto_reference.contract_markdown,
}


def expand(markdown: str) -> str:
    """`markdown` with each marker replaced by its table."""

    def table(found: re.Match[str]) -> str:
        name = found.group(1)
        if name not in TABLES:
            raise PluginError(f"no reference table {name!r} (known: {', '.join(TABLES)})")
        return TABLES[name]()

    return MARKER.sub(table, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return expand(markdown)
