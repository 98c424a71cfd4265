"""README.md is what a newcomer reads first: short, every link in it leads somewhere, and every
shell command in it runs as written in a checkout. A command that needs a server running (or a
live key, or is the whole suite) sits in a block marked, on the line before its fence,
`<!-- readme-test: skip: WHY -->`; the e2e tests run those flows (tests/e2e/test_processes.py:
`make run`, then the CLI's seed example and the `curl` against it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from tests.conftest import REPO_ROOT, SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tools.processes import Process

README = REPO_ROOT / "README.md"
MOST_LINES = 150
COMMAND_SECONDS = 180.0
SKIP = re.compile(r"<!-- readme-test: skip: (.+?) -->")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    language: str
    body: str
    skip_because: str | None


def blocks() -> list[Block]:
    """Every fenced block of the README, with the reason it is not run when it is marked so."""
    text = README.read_text(encoding="utf-8")
    found = []
    for fence in FENCE.finditer(text):
        before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marked = SKIP.fullmatch(before.strip())
        found.append(Block(fence.group(1), fence.group(2), marked.group(1) if marked else None))
    return found


def commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blanks left out."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


SHELL = [b for b in blocks() if b.language in ("sh", "bash", "console")]
RUN = [command for b in SHELL if b.skip_because is None for command in commands(b.body)]


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MOST_LINES, f"README.md has {lines} lines, at most {MOST_LINES}"


def test_every_link_of_the_readme_leads_to_a_file() -> None:
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the docs"
    for target in local:
        assert (REPO_ROOT / target).is_file(), target


def test_every_shell_block_is_run_or_says_why_not() -> None:
    assert RUN, "the README has no command this test runs"
    for block in SHELL:
        assert block.skip_because is None or block.skip_because.strip(), block


def test_the_skipped_blocks_hold_what_needs_a_server() -> None:
    """`make run` and `make test` are never run here, and are in the README."""
    skipped = [c for b in SHELL if b.skip_because for c in commands(b.body)]
    assert any(c.startswith("make run") for c in skipped)
    assert any(c.startswith("make test") for c in skipped)
    assert not any(c.startswith(("make run", "make test")) for c in RUN)


def test_the_readmes_cli_example_is_the_one_the_e2e_tests_run() -> None:
    """The CLI call needs `make run`; tests/e2e/test_processes.py runs these arguments against
    it."""
    (cli,) = [
        c for b in SHELL for c in commands(b.body) if c.startswith(".venv/bin/rerank --model")
    ]
    assert f"--model {SEED_MODEL} --top-n 2" in cli
    for text in (SEED_QUERY, *SEED_DOCUMENTS):
        assert f'"{text}"' in cli, text


@pytest.mark.parametrize("command", RUN)
def test_the_readmes_command_runs(command: str) -> None:
    with Process(["bash", "-c", command], cwd=REPO_ROOT) as process:
        code = process.wait(timeout=COMMAND_SECONDS)
        assert code == 0, f"{command!r} exited {code}:\n{process.output}"
