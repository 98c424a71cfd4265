"""The docs site builds with `make docs` (--strict), and its reference tables say what their
sources say: a setting, an error, a metric, a fault or a part of the contract added to the code
reaches the built pages without anyone editing them (docs/hooks/reference.py makes them)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from rerank.client import from_status
from rerank.contract import ERROR_DOMAIN
from rerank.mock_gateway import _faults
from rerank.mock_gateway._malformed import MALFORMED_VARIANTS
from rerank.mock_gateway._versions import PROTOCOL_VERSIONS
from rerank.server import _metric_families as families
from rerank.server._config import fields, names, range_of
from rerank.server._status import STATUS_BY_ERROR
from rerank.v1 import rerank_service_pb2 as pb
from tests.conftest import REPO_ROOT
from tools.processes import Process

BUILD_SECONDS = 180.0
PROTO = REPO_ROOT / "protos/rerank/v1/rerank_service.proto"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it, into a directory of the test's own."""
    out = tmp_path_factory.mktemp("site")
    with Process(["make", "docs", f"SITE_DIR={out}"], cwd=REPO_ROOT) as build:
        code = build.wait(timeout=BUILD_SECONDS)
        assert code == 0, build.output
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def text_of(markup: str) -> str:
    """The page's text: inline tags dropped, the others a space, entities decoded, whitespace
    collapsed."""
    inline = re.sub(r"</?(?:code|a|em|strong|span)\b[^>]*>", "", markup)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def rows(markup: str) -> list[str]:
    """Each table row's text."""
    return [text_of(row) for row in re.findall(r"<tr>(.*?)</tr>", markup, re.DOTALL)]


def row_naming(markup: str, name: str) -> str:
    """The one row whose first cell is `name`."""
    found = [row for row in rows(markup) if row.split(" ", 1)[0] == name]
    assert len(found) == 1, (name, found)
    return found[0]


def test_every_setting_of_the_model_is_on_the_configuration_page(site: Path) -> None:
    shown = text_of(page(site, "configuration"))
    listed = 0
    for name, field in fields().items():
        spelled = str(names(name))
        if not spelled:
            continue  # derived from others, never set by a user
        listed += 1
        for part in spelled.split(" / "):
            assert part in shown, part
        assert range_of(field) in shown, (name, range_of(field))
    assert listed > 40


def client_raises(code: grpc.StatusCode, reason: str) -> str:
    """The class the Python client raises for `code` with `reason`, by its own mapping."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message="")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    return type(from_status(status)).__name__


def test_every_error_is_on_the_errors_page_with_its_status_and_meaning(site: Path) -> None:
    markup = page(site, "errors")
    reasons = [error for error in STATUS_BY_ERROR if "reason" in vars(error)]
    for error in reasons:
        row = row_naming(markup, error.reason)
        assert STATUS_BY_ERROR[error].name in row, (error, row)
        assert client_raises(STATUS_BY_ERROR[error], error.reason) in row, (error, row)
    # Every ErrorReason value is some error's, and its proto comment is the row's meaning.
    values = {v.name for v in pb.ErrorReason.DESCRIPTOR.values} - {"ERROR_REASON_UNSPECIFIED"}
    assert {"ERROR_REASON_" + error.reason for error in reasons} == values
    shown = text_of(markup)
    assert "a question only a named caller can ask (GetUsage)" in shown
    assert "incident id" in shown  # the statuses without an ErrorInfo, from the RPCs' lists


def test_every_metric_family_is_on_the_operating_page(site: Path) -> None:
    markup = page(site, "operating")
    for family in families.FAMILIES:
        name = families.COST_SHOWN if family is families.COST else family.name
        row = row_naming(markup, f"{name}_total" if family.kind == "counter" else name)
        assert family.kind in row
        for label in family.labels:
            assert label in row, (family.name, label)
        assert " ".join(family.help.split()) in row


def test_every_fault_of_the_mock_is_on_its_page(site: Path) -> None:
    markup = page(site, "mock-gateway")
    for name, kind in _faults._FAULTS.items():
        row = row_naming(markup, name)
        for param in kind.params:
            assert param in row, (name, param)
    shown = text_of(markup)
    for variant in (*MALFORMED_VARIANTS, *_faults.DROP_VARIANTS):
        assert variant in shown, variant
    for version in PROTOCOL_VERSIONS.values():
        row = row_naming(markup, f"http://HOST:PORT{version.base_path}")
        for kind in (*version.warning_types, *version.error_types):
            assert kind in row, (version.name, kind)


def _comment_blocks() -> list[str]:
    """Each comment block of the proto, as one line without `//` and backticks."""
    blocks: list[list[str]] = [[]]
    for line in PROTO.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            blocks[-1].append(stripped.removeprefix("//").strip())
        elif blocks[-1]:
            blocks.append([])
    return [" ".join(" ".join(b).replace("`", "").split()) for b in blocks if b]


def test_the_contract_page_is_the_proto_with_its_comments(site: Path) -> None:
    shown = text_of(page(site, "contract")).replace("`", "")
    for method in pb.DESCRIPTOR.services_by_name["RerankService"].methods:
        assert f"rpc {method.name}(" in shown.replace("( ", "("), method.name
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        for field in message.fields:
            assert field.name in shown, (message.name, field.name)
    for enum in (pb.ErrorReason.DESCRIPTOR, pb.Warning.Type.DESCRIPTOR):
        for value in enum.values:
            assert value.name in shown, value.name
    blocks = _comment_blocks()
    assert len(blocks) > 80
    for block in blocks:
        # A bullet's dash is markup; its words are on the page in order.
        first_sentence = block.removeprefix("- ").split(". ")[0]
        assert first_sentence.replace(" - ", " ") in shown, first_sentence


def test_no_page_is_only_a_placeholder() -> None:
    for source in (REPO_ROOT / "docs").rglob("*.md"):
        text = source.read_text(encoding="utf-8")
        assert "TODO" not in text, source
        assert len(text.split()) > 60, source
