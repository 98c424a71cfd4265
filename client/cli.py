"""The `rerank` command: rerank documents, or list the models, from a shell.

Usage::

    rerank [--target HOST:PORT] [--model M] [--top-n N] [--timeout S] [--no-documents]
           [--provider-options JSON] [--file PATH [--jsonl]] [--pretty] QUERY [DOCUMENT ...]
    rerank [--target HOST:PORT] [--model M] [--top-n N] [--timeout S]
           [--provider-options JSON] --batch FILE
    rerank [--target HOST:PORT] [--timeout S] [--pretty] --list-models
    rerank [--target HOST:PORT] [--timeout S] [--pretty] --usage

Prints the AI SDK-style JSON result on stdout (`--usage`: the caller's own standing today);
with `--batch`, one JSON line per query of FILE, in order (a failed query's line is
`{"error": {...}}`). With `RERANK_TOKEN` set, every call sends `authorization: Bearer
$RERANK_TOKEN` (an environment variable, not a flag, so the token stays out of the process
list). Exit status: 0 on success, 2 for a usage error, an unreadable input file or
INVALID_ARGUMENT, 1 for any other failed call, and 1 when any query of a batch failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from ._client import RerankClient
from ._exceptions import InvalidRequestError, RerankClientError
from ._models import BatchItem, RerankRequest

__all__ = ["main"]

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "RERANK_TARGET"
TOKEN_ENV = "RERANK_TOKEN"

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2

_PROG = "rerank"

#: The keys of one `--batch` line: the AI SDK's `rerank()` arguments, and the cache switch.
_BATCH_KEYS = ("query", "documents", "model", "topN", "providerOptions", "bypassCache")


class _InputError(Exception):
    """Bad input the user can fix (a file, a JSON option); reported in one line, exit 2."""


def _parser(default_target: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Rerank documents by relevance to a query with a rerank.v1 server.",
        epilog="Prints the AI SDK-style JSON result ({ranking, rerankedDocuments, ...}).",
    )
    parser.add_argument("query", nargs="?", help="the search query")
    parser.add_argument("documents", nargs="*", help="documents (plain text), in order")
    parser.add_argument(
        "--target",
        default=default_target,
        help=f"server address (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument("--model", default="", help="model slug, e.g. cohere/rerank-v3.5")
    parser.add_argument("--top-n", type=int, help="return only the N best documents")
    parser.add_argument("--timeout", type=float, help="deadline in seconds (default: 30)")
    parser.add_argument(
        "--provider-options", metavar="JSON", help='e.g. \'{"cohere": {"maxTokensPerDoc": 512}}\''
    )
    parser.add_argument(
        "--file",
        metavar="PATH",
        help="read more documents from PATH ('-' for stdin), one per line; blank lines skipped",
    )
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help="--file holds JSON lines: an object (object document) or a string (text document)",
    )
    parser.add_argument(
        "--batch",
        metavar="FILE",
        help="rerank many queries in one call: FILE ('-' for stdin) holds JSON lines, each "
        '{"query", "documents"[, "model", "topN", "providerOptions", "bypassCache"]}; '
        "prints one JSON line per query, in order. --model, --top-n, --provider-options and "
        "--no-cache apply to lines that do not say",
    )
    parser.add_argument("--pretty", action="store_true", help="indent the JSON output")
    parser.add_argument(
        "--no-cache", action="store_true", help="ask the server to bypass its result cache"
    )
    parser.add_argument(
        "--no-documents",
        action="store_true",
        help="ask the server not to send the documents back, and print each ranked entry as "
        "its originalIndex and score only (no rerankedDocuments); with --batch, for every line",
    )
    parser.add_argument(
        "--list-models", action="store_true", help="list the reranking models and exit"
    )
    parser.add_argument(
        "--usage",
        action="store_true",
        help="show this caller's spend, budget, limits, calls and refusals today, and exit",
    )
    return parser


def _read_lines(path: str, stdin: TextIO) -> list[str]:
    if path == "-":
        return stdin.read().splitlines()
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _InputError(f"cannot read {path}: {exc}") from exc


def _documents_from_file(path: str, *, jsonl: bool, stdin: TextIO) -> list[Any]:
    name = "<stdin>" if path == "-" else path
    documents: list[Any] = []
    for number, line in enumerate(_read_lines(path, stdin), start=1):
        if not line.strip():
            continue
        if not jsonl:
            documents.append(line)
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _InputError(f"{name}:{number}: invalid JSON: {exc.msg}") from exc
        if not isinstance(value, str | dict):
            raise _InputError(
                f"{name}:{number}: expected a JSON object or string, got {type(value).__name__}"
            )
        documents.append(value)
    return documents


def _batch_from_file(path: str, defaults: RerankRequest, stdin: TextIO) -> list[RerankRequest]:
    """The requests of a `--batch` file, one per non-blank line; `defaults` fills what a line
    leaves out."""
    name = "<stdin>" if path == "-" else path
    requests = []
    for number, line in enumerate(_read_lines(path, stdin), start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _InputError(f"{where}: invalid JSON: {exc.msg}") from exc
        requests.append(_batch_line(value, where, defaults))
    return requests


def _batch_line(value: Any, where: str, defaults: RerankRequest) -> RerankRequest:
    if not isinstance(value, dict):
        raise _InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(_BATCH_KEYS))
    if unknown:
        raise _InputError(f"{where}: unknown key {unknown[0]!r}; keys are {', '.join(_BATCH_KEYS)}")
    query, documents = value.get("query"), value.get("documents")
    if not isinstance(query, str):
        raise _InputError(f"{where}: 'query' must be a string")
    if not isinstance(documents, list):
        raise _InputError(f"{where}: 'documents' must be a list of strings or objects")
    for position, document in enumerate(documents):
        if not isinstance(document, str | dict):
            raise _InputError(f"{where}: documents[{position}] must be a string or an object")
    checks: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
        ("model", str, "a string"),
        ("providerOptions", dict, "an object"),
        ("bypassCache", bool, "true or false"),
    )
    for key, kind, described in checks:
        if key in value and not isinstance(value[key], kind):
            raise _InputError(f"{where}: '{key}' must be {described}")
    top_n = value.get("topN", defaults.top_n)
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int)):
        raise _InputError(f"{where}: 'topN' must be an integer")
    return RerankRequest(
        query=query,
        documents=documents,
        model=value.get("model", defaults.model),
        top_n=top_n,
        provider_options=value.get("providerOptions", defaults.provider_options),
        bypass_cache=value.get("bypassCache", defaults.bypass_cache),
        return_documents=defaults.return_documents,
    )


def _report_batch(items: list[BatchItem], *, documents: bool, out: TextIO, err: TextIO) -> int:
    """One JSON line per item on `out` (`documents` as for one query); a line on `err` naming
    the failed ones."""
    for item in items:
        _dump(item.to_json_dict(documents=documents), pretty=False, out=out)
    failures = [
        f"requests[{position}]: {item.error.code.name}: {item.error.details}"
        for position, item in enumerate(items)
        if item.error is not None
    ]
    if not failures:
        return EXIT_OK
    err.write(f"{_PROG}: {len(failures)} of {len(items)} requests failed: ")
    err.write("; ".join(failures) + "\n")
    return EXIT_RPC_ERROR


def _provider_options(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _InputError(f"--provider-options: invalid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise _InputError("--provider-options: expected a JSON object")
    return value


def _dump(value: Any, *, pretty: bool, out: TextIO) -> None:
    if pretty:
        text = json.dumps(value, ensure_ascii=False, indent=2)
    else:
        # Compact, as JavaScript's JSON.stringify prints it: one line per result for pipes.
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    out.write(text + "\n")


def _report_rpc_error(error: RerankClientError, err: TextIO) -> int:
    line = f"{_PROG}: {error.code.name}: {error.details}"
    # The server's message usually names the fields already; add only what it left out.
    missing = [(f, d) for f, d in error.field_violations if f"{f}: {d}" not in error.details]
    if missing:
        line += " (" + "; ".join(f"{f}: {d}" for f, d in missing) + ")"
    err.write(line + "\n")
    return EXIT_USAGE if isinstance(error, InvalidRequestError) else EXIT_RPC_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the `rerank` command with `argv` (default: `sys.argv[1:]`); return the exit status."""
    parser = _parser(os.environ.get(TARGET_ENV) or DEFAULT_TARGET)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help (0) and on usage errors (2, after printing them); return
        # the status instead so `main` can be called from code and tests.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    if args.list_models and args.usage:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{_PROG}: error: --list-models and --usage go alone\n")
        return EXIT_USAGE
    if args.list_models or args.usage:
        if args.query is not None or args.file is not None or args.batch is not None:
            flag = "--list-models" if args.list_models else "--usage"
            parser.print_usage(sys.stderr)
            sys.stderr.write(f"{_PROG}: error: {flag} takes no query or documents\n")
            return EXIT_USAGE
    elif args.batch is not None:
        if args.query is not None or args.file is not None or args.pretty:
            parser.print_usage(sys.stderr)
            sys.stderr.write(
                f"{_PROG}: error: --batch reads the queries and documents from FILE and writes "
                "JSON lines: no QUERY, DOCUMENT, --file or --pretty\n"
            )
            return EXIT_USAGE
    elif args.query is None:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{_PROG}: error: the query is required\n")
        return EXIT_USAGE
    if args.jsonl and args.file is None:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{_PROG}: error: --jsonl needs --file\n")
        return EXIT_USAGE

    # Only None with --list-models, --usage or --batch: unused there.
    query: str = args.query or ""
    batch: list[RerankRequest] = []
    try:
        documents: list[Any] = list(args.documents)
        if args.file is not None:
            documents += _documents_from_file(args.file, jsonl=args.jsonl, stdin=sys.stdin)
        provider_options = _provider_options(args.provider_options)
        if args.batch is not None:
            defaults = RerankRequest(
                "",
                (),
                model=args.model,
                top_n=args.top_n,
                provider_options=provider_options,
                bypass_cache=args.no_cache,
                return_documents=not args.no_documents,
            )
            batch = _batch_from_file(args.batch, defaults, sys.stdin)
    except _InputError as exc:
        sys.stderr.write(f"{_PROG}: error: {exc}\n")
        return EXIT_USAGE

    try:
        token = os.environ.get(TOKEN_ENV)
        metadata = {"authorization": f"Bearer {token}"} if token else None
        with RerankClient(args.target, metadata=metadata) as client:
            if args.list_models:
                models = client.list_models(timeout=args.timeout)
                _dump([m.to_json_dict() for m in models], pretty=args.pretty, out=sys.stdout)
            elif args.usage:
                usage = client.get_usage(timeout=args.timeout)
                _dump(usage.to_json_dict(), pretty=args.pretty, out=sys.stdout)
            elif args.batch is not None:
                items = client.rerank_many(batch, timeout=args.timeout)
                return _report_batch(
                    items, documents=not args.no_documents, out=sys.stdout, err=sys.stderr
                )
            else:
                result = client.rerank(
                    query,
                    documents,
                    model=args.model,
                    top_n=args.top_n,
                    provider_options=provider_options,
                    bypass_cache=args.no_cache,
                    return_documents=not args.no_documents,
                    timeout=args.timeout,
                )
                as_json = result.to_json_dict(documents=not args.no_documents)
                _dump(as_json, pretty=args.pretty, out=sys.stdout)
    except RerankClientError as exc:
        return _report_rpc_error(exc, sys.stderr)
    except (TypeError, ValueError) as exc:
        # The request could not be built, e.g. --top-n beyond int32.
        sys.stderr.write(f"{_PROG}: error: {exc}\n")
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
