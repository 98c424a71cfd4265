"""RERANK_CALLERS_FILE: what a good file means, and one precise line for every bad one."""

from __future__ import annotations

import hashlib
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from rerank.server.__main__ import settings_from
from rerank.server._callers import CallerRegistry, CallersFileError, load_directory, parse_callers
from rerank.server._credentials import directory_of
from rerank.server._domain import Caller
from rerank.server._limits import CallerLimits

SECRET = "s3cret-search-api-token"
SECRET_SHA256 = hashlib.sha256(SECRET.encode()).hexdigest()
OTHER = "batch-token-7"

GOOD = f"""
[callers.search-api]
token_sha256 = "{SECRET_SHA256}"
requests_per_second = 5
burst = 10
max_concurrent_calls = 16
daily_budget_usd = 0.0025
models = ["cohere/*", "voyage/rerank-2.5"]

[callers.batch]
token = "{OTHER}"
cache_scope = "shared"

[callers.edge]
subject = "CN=edge,O=Example"
san = ["edge.internal", "edge@example.test"]
"""


def directory(text: str = GOOD, unnamed: tuple[str, ...] = ()) -> object:
    return directory_of(parse_callers(text, "callers.toml"), unnamed, source="callers.toml")


def test_a_good_file_names_each_caller_with_its_limits() -> None:
    found = directory_of(parse_callers(GOOD, "callers.toml"))
    assert found.callers["search-api"] == Caller(
        name="search-api",
        limits=CallerLimits(
            requests_per_second=5.0,
            burst=10.0,
            max_concurrent_calls=16,
            # Exactly as written, not float's 0.00250000000000000005...
            daily_budget_usd=Decimal("0.0025"),
        ),
        models=("cohere/*", "voyage/rerank-2.5"),
        shared_cache=False,
    )
    assert found.callers["batch"] == Caller(name="batch", shared_cache=True)
    assert found.callers["edge"].limits == CallerLimits()


def test_tokens_and_hashes_resolve_to_their_callers() -> None:
    found = directory_of(parse_callers(GOOD), ["legacy-token"])
    assert found.for_token(SECRET.encode()) == (True, found.callers["search-api"])
    assert found.for_token(OTHER.encode()) == (True, found.callers["batch"])
    # A token of RERANK_AUTH_TOKENS is known, and names nobody.
    assert found.for_token(b"legacy-token") == (True, None)
    for stranger in (b"", b"nope", SECRET_SHA256.encode(), SECRET.encode() + b" "):
        assert found.for_token(stranger) == (False, None)


def test_certificates_name_callers_by_subject_then_san() -> None:
    found = directory_of(parse_callers(GOOD))
    edge = found.callers["edge"]
    assert found.names_by_certificate
    assert found.for_certificate("CN=edge,O=Example", []) is edge
    assert found.for_certificate("CN=someone-else", ["nope", "edge@example.test"]) is edge
    assert found.for_certificate("CN=edge", ["other.internal"]) is None
    assert found.for_certificate(None, []) is None
    assert not directory_of(parse_callers('[callers.a]\ntoken = "t"\n')).names_by_certificate


def test_a_budget_may_be_written_as_a_string_or_an_integer() -> None:
    for written, meant in (('"0.0025"', "0.0025"), ("20", "20"), ("0", "0"), ("1e-3", "0.001")):
        (entry,) = parse_callers(f'[callers.a]\ntoken = "t"\ndaily_budget_usd = {written}\n')
        assert entry.caller.limits.daily_budget_usd == Decimal(meant)


def test_models_are_globs() -> None:
    caller = Caller(name="a", models=("cohere/*", "voyage/rerank-2.5"))
    assert caller.may_use("cohere/rerank-v3.5")
    assert caller.may_use("voyage/rerank-2.5")
    assert not caller.may_use("voyage/rerank-2.5-lite")
    assert not caller.may_use("Cohere/rerank-v3.5")  # slugs are case-sensitive
    assert Caller(name="b").may_use("anything/at-all")


def test_no_file_and_an_empty_one_name_nobody() -> None:
    assert load_directory(None, ["t"]).callers == {}
    assert directory_of(parse_callers("")).callers == {}
    assert directory_of(parse_callers("[callers]\n")).callers == {}


# --- bad input: one line naming the caller and the key -------------------------------------

BAD = [
    # (file text, the caller named, the key named)
    (f'[callers.a]\ntoken_sha256 = "{SECRET_SHA256}"\nrps = 5\n', "a", "rps"),
    ('[callers.a]\ntoken = "t"\nrequests_per_second = -1\n', "a", "requests_per_second"),
    ('[callers.a]\ntoken = "t"\nrequests_per_second = 0\n', "a", "requests_per_second"),
    ('[callers.a]\ntoken = "t"\nrequests_per_second = nan\n', "a", "requests_per_second"),
    ('[callers.a]\ntoken = "t"\nrequests_per_second = "5"\n', "a", "requests_per_second"),
    ('[callers.a]\ntoken = "t"\nrequests_per_second = 2\nburst = -5\n', "a", "burst"),
    ('[callers.a]\ntoken = "t"\nrequests_per_second = 2\nburst = 0.5\n', "a", "burst"),
    ('[callers.a]\ntoken = "t"\nburst = 5\n', "a", "burst"),
    ('[callers.a]\ntoken = "t"\nmax_concurrent_calls = -2\n', "a", "max_concurrent_calls"),
    ('[callers.a]\ntoken = "t"\nmax_concurrent_calls = 0\n', "a", "max_concurrent_calls"),
    ('[callers.a]\ntoken = "t"\nmax_concurrent_calls = 1.5\n', "a", "max_concurrent_calls"),
    ('[callers.a]\ntoken = "t"\nmax_concurrent_calls = true\n', "a", "max_concurrent_calls"),
    ('[callers.a]\ntoken = "t"\ndaily_budget_usd = -0.01\n', "a", "daily_budget_usd"),
    ('[callers.a]\ntoken = "t"\ndaily_budget_usd = "lots"\n', "a", "daily_budget_usd"),
    ('[callers.a]\ntoken = "t"\ndaily_budget_usd = inf\n', "a", "daily_budget_usd"),
    ('[callers.a]\ntoken = "t"\nmodels = "cohere/*"\nmodels = []\n', "a", "models"),  # twice
    ('[callers.a]\ntoken = "t"\nmodels = [1]\n', "a", "models"),
    ('[callers.a]\ntoken = "t"\ncache_scope = "global"\n', "a", "cache_scope"),
    ('[callers.a]\ntoken = "t"\nsubject = ""\n', "a", "subject"),
    ('[callers.a]\ntoken = "t"\nsan = [""]\n', "a", "san"),
    (f'[callers.a]\ntoken_sha256 = "{SECRET_SHA256[:-1]}"\n', "a", "token_sha256"),
    (f'[callers.a]\ntoken_sha256 = "{SECRET_SHA256[:-1]}z"\n', "a", "token_sha256"),
    (f'[callers.a]\ntoken = "{SECRET}"\ntoken_sha256 = "{SECRET_SHA256}"\n', "a", "token"),
    ('[callers.a]\ntoken = ""\n', "a", "token"),
    (f'[callers.a]\ntoken = " {SECRET}"\n', "a", "token"),
    ("[callers.a]\ntoken = 5\n", "a", "token"),
    ("[callers.a]\nrequests_per_second = 5\n", "a", None),  # nothing to recognise it by
    (f'[callers.a]\ntoken = "{SECRET}"\n[callers.b]\ntoken = "{SECRET}"\n', "b", "token"),
    (  # the same token, once in the clear and once hashed
        f'[callers.a]\ntoken = "{SECRET}"\n[callers.b]\ntoken_sha256 = "{SECRET_SHA256.upper()}"\n',
        "b",
        "token",
    ),
    ('[callers.a]\nsubject = "CN=x"\n[callers.b]\nsubject = "CN=x"\n', "b", "subject"),
    ('[callers.a]\nsan = "x.internal"\n[callers.b]\nsan = ["x.internal"]\n', "b", "san"),
    ('[callers."has space"]\ntoken = "t"\n', "has space", None),
    ('[callers.a]\ntoken = "t"\n[callers.a]\ntoken = "u"\n', "a", None),  # a table twice
    (f'[callers.a]\ntoken = "{SECRET}\n', "a", "token"),  # an unterminated string
    ('[callers.a]\ntoken = "t"\nrequests_per_second = = 5\n', "a", "requests_per_second"),
    ('[callers.a]\ntoken = "t"\n\n[callers.b]\ntoken = "u"\nburst 5\n', "b", None),
    ("[callers]\na = 5\n", "a", None),
]


@pytest.mark.parametrize(("text", "caller", "key"), BAD)
def test_each_mistake_is_one_line_naming_the_caller_and_the_key(
    text: str, caller: str, key: str | None
) -> None:
    with pytest.raises(CallersFileError) as caught:
        directory(text)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("RERANK_CALLERS_FILE callers.toml: ")
    assert f"caller {caller!r}" in message
    if key is not None:
        assert f"key {key!r}" in message
    # Neither the token, nor its digest in either case, nor the near-miss digests above.
    for secret in (SECRET, SECRET_SHA256, SECRET_SHA256.upper(), SECRET_SHA256[:-1]):
        assert secret not in message


def test_a_file_without_caller_tables_is_named_at_the_top_level() -> None:
    for text, named in (("callers = 5\n", "'callers'"), ("[tokens]\na = 1\n", "'tokens'")):
        with pytest.raises(CallersFileError) as caught:
            directory(text)
        assert named in str(caught.value)


def test_a_token_both_named_and_in_rerank_auth_tokens_is_refused() -> None:
    with pytest.raises(CallersFileError) as caught:
        directory(f'[callers.a]\ntoken = "{SECRET}"\n', unnamed=(SECRET,))
    message = str(caught.value)
    assert "RERANK_AUTH_TOKENS" in message
    assert "caller 'a'" in message
    assert SECRET not in message
    assert SECRET_SHA256 not in message


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CallersFileError) as caught:
        load_directory(str(tmp_path / "missing.toml"))
    assert "missing.toml" in str(caught.value)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[callers]")
    with pytest.raises(CallersFileError) as caught:
        load_directory(str(binary))
    assert "UTF-8" in str(caught.value)


# --- at start: the server's settings -------------------------------------------------------


def test_a_bad_callers_file_stops_the_server_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(f'[callers.search-api]\ntoken = "{SECRET}"\nburst = -1\n')
    with pytest.raises(SystemExit) as exited:
        settings_from([], {"RERANK_CALLERS_FILE": str(path)})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "caller 'search-api', key 'burst'" in line
    assert SECRET not in err
    assert "Traceback" not in err


def test_callers_named_by_certificate_need_mutual_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "callers.toml"
    path.write_text('[callers.edge]\nsubject = "CN=edge"\n')
    with pytest.raises(SystemExit) as exited:
        settings_from([], {"RERANK_CALLERS_FILE": str(path)})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--tls-client-ca" in err
    assert "caller 'edge'" in err


def test_a_good_callers_file_is_a_setting(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(GOOD.split("[callers.edge]")[0])
    settings = settings_from([], {"RERANK_CALLERS_FILE": str(path)})
    assert settings.callers_file == str(path)
    assert SECRET_SHA256 not in repr(settings)


# --- reload ---------------------------------------------------------------------------------


def test_a_reload_swaps_the_callers_and_a_bad_file_keeps_the_old_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(f'[callers.a]\ntoken = "{SECRET}"\nrequests_per_second = 1\n')
    registry = CallerRegistry(str(path), ["legacy"])
    assert registry.directory.callers["a"].limits.requests_per_second == 1
    path.write_text(f'[callers.a]\ntoken = "{SECRET}"\nrequests_per_second = 9\n[callers.b]\n')
    with caplog.at_level(logging.INFO):
        assert not registry.reload()
    assert registry.directory.callers["a"].limits.requests_per_second == 1
    assert "caller 'b'" in caplog.text
    assert "previous ones stay" in caplog.text
    path.write_text(f'[callers.a]\ntoken = "{SECRET}"\nrequests_per_second = 9\n')
    with caplog.at_level(logging.INFO):
        assert registry.reload()
    assert registry.directory.callers["a"].limits.requests_per_second == 9
    assert registry.directory.for_token(b"legacy") == (True, None)
    assert SECRET not in caplog.text
    assert SECRET_SHA256 not in caplog.text
    assert not CallerRegistry(None).reload()
