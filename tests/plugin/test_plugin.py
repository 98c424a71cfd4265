"""The `rerank.testing` pytest plugin, as a consumer's test suite uses it.

Each test writes a consumer's test file and runs it in a separate pytest process
(`runpytest_subprocess`): the plugin is found through its `pytest11` entry point, exactly as
in a project that merely installed the package, and its session-wide servers and threads
live and die with that process. The inner runs are as strict as this project's own:
warnings are errors.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER_INI = """
[pytest]
filterwarnings = error
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
timeout = 60
"""

SEED = """
SEED_QUERY = "What is the capital of France?"
SEED_DOCUMENTS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Madrid is the capital of Spain.",
]
"""


@pytest.fixture
def consumer(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INNER_INI)
    pytester.makepyfile(seed_data=SEED)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # -p no:cacheprovider: the inner run must not write a cache into the temporary project.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args, timeout=120)


def test_a_consumer_test_gets_the_seed_example_right(consumer: pytest.Pytester) -> None:
    consumer.makepyfile(
        test_consumer="""
        import re

        from seed_data import SEED_DOCUMENTS, SEED_QUERY

        def test_x(rerank_client):
            result = rerank_client.rerank(
                SEED_QUERY, SEED_DOCUMENTS, model="cohere/rerank-v3.5", top_n=2
            )
            assert [r.original_index for r in result.ranking][0] == 0
            assert len(result.ranking) == 2
            assert result.reranked_documents[0] == "Paris is the capital of France."
            assert result.model == "cohere/rerank-v3.5"

        def test_the_urls(rerank_mock_gateway, rerank_server):
            origin = rerank_mock_gateway.url.removesuffix("/v4/ai")
            assert re.fullmatch(r"http://127\\.0\\.0\\.1:[1-9][0-9]*", origin)
            assert rerank_mock_gateway.v4_url == rerank_mock_gateway.url
            assert rerank_mock_gateway.v3_url == origin + "/v3/ai"
            assert rerank_server.target.startswith("127.0.0.1:")
            assert not rerank_server.target.endswith(":0")

        def test_models(rerank_client):
            assert "cohere/rerank-v3.5" in [m.id for m in rerank_client.list_models()]

        async def test_async(async_rerank_client):
            result = await async_rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS, top_n=1)
            assert result.ranking[0].original_index == 0
        """
    )
    result = run(consumer)
    result.assert_outcomes(passed=4)


def test_the_mock_fixture_serves_each_protocol_version_at_its_own_url(
    consumer: pytest.Pytester,
) -> None:
    consumer.makepyfile(
        test_versions="""
        import json
        import urllib.request

        def config(base_url):
            request = urllib.request.Request(
                base_url + "/config", headers={"authorization": "Bearer k"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                models = json.load(response)["models"]
            return {m["specification"]["specificationVersion"] for m in models}

        def test_url_is_v4(rerank_mock_gateway):
            assert config(rerank_mock_gateway.url) == {"v4"}
            assert config(rerank_mock_gateway.v4_url) == {"v4"}

        def test_v3_url_is_v3(rerank_mock_gateway):
            assert config(rerank_mock_gateway.v3_url) == {"v3"}
        """
    )
    result = run(consumer)
    result.assert_outcomes(passed=2)


def test_a_scripted_fault_reaches_the_client_exactly_as_often_as_scripted(
    consumer: pytest.Pytester,
) -> None:
    consumer.makepyfile(
        test_faults="""
        import pytest
        from rerank.client import PermissionDeniedError, RateLimitedError, UnavailableError
        from seed_data import SEED_DOCUMENTS, SEED_QUERY

        def test_rate_limited_once(rerank_mock_gateway, rerank_client):
            rerank_mock_gateway.fail_next("rate_limit", retryAfterMs=500, times=1)
            with pytest.raises(RateLimitedError) as caught:
                rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)
            assert caught.value.retry_delay == pytest.approx(0.5)
            assert caught.value.error_info.reason == "UPSTREAM_RATE_LIMITED"
            # times=1: the next call is answered normally.
            assert rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS).ranking[0].original_index == 0

        def test_queued_faults_in_order(rerank_mock_gateway, rerank_client):
            rerank_mock_gateway.fail_next("error", status=403, type="forbidden")
            # One attempt: the client's service config retries UNAVAILABLE, but not an answer
            # about the gateway (grpc-retry-pushback-ms: -1), which is the server's to retry.
            rerank_mock_gateway.fail_next("error", status=503, times=1)
            with pytest.raises(PermissionDeniedError):
                rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)
            with pytest.raises(UnavailableError):
                rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)
            assert rerank_mock_gateway.script.pending_faults == 0
            rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)

        def test_a_typo_fails_at_once(rerank_mock_gateway):
            with pytest.raises(ValueError, match="rate_limit"):
                rerank_mock_gateway.fail_next("rate_limt")
            with pytest.raises(ValueError, match="retryAfterMs"):
                rerank_mock_gateway.fail_next("rate_limit", retryAfterMs="soon")
        """
    )
    result = run(consumer)
    result.assert_outcomes(passed=3)


def test_fixed_scores_change_the_order(consumer: pytest.Pytester) -> None:
    consumer.makepyfile(
        test_scores="""
        from seed_data import SEED_DOCUMENTS, SEED_QUERY

        def test_fixed_scores(rerank_mock_gateway, rerank_client):
            rerank_mock_gateway.set_scores({SEED_DOCUMENTS[2]: 0.99, SEED_DOCUMENTS[0]: 0.01})
            result = rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)
            assert [r.original_index for r in result.ranking] == [2, 1, 0]
            assert result.ranking[0].score == 0.99
            assert result.ranking[2].score == 0.01
            # Equal fixed scores: ties by ascending index, as always.
            rerank_mock_gateway.set_scores({SEED_DOCUMENTS[1]: 0.99})
            result = rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS, top_n=2)
            assert [r.original_index for r in result.ranking] == [1, 2]
        """
    )
    result = run(consumer)
    result.assert_outcomes(passed=1)


def test_scripts_do_not_leak_between_tests(consumer: pytest.Pytester) -> None:
    consumer.makepyfile(
        test_isolation="""
        import pytest
        from seed_data import SEED_DOCUMENTS, SEED_QUERY

        def test_1_scripts_and_fails(rerank_mock_gateway, rerank_client):
            rerank_mock_gateway.fail_next("rate_limit", times=5)
            rerank_mock_gateway.set_scores({SEED_DOCUMENTS[2]: 1.0})
            pytest.fail("a test that dies with its script unused")

        def test_2_scripts_through_the_mock_only(rerank_mock_gateway):
            rerank_mock_gateway.fail_next("error", status=500, times=2)

        def test_3_sees_a_clean_mock(rerank_mock_gateway, rerank_client):
            assert rerank_mock_gateway.script.pending_faults == 0
            result = rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)
            assert [r.original_index for r in result.ranking][0] == 0

        def test_4_client_only_sees_a_clean_mock(rerank_client):
            result = rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)
            assert [r.original_index for r in result.ranking][0] == 0
        """
    )
    result = run(consumer)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_1_scripts_and_fails FAILED*"])


def test_the_plugin_works_beside_a_consumers_own_client_server_and_mock_gateway(
    consumer: pytest.Pytester,
) -> None:
    # Service repositories often have their own `client/`, `server/` or `mock_gateway.py`;
    # pytest puts the consumer's root first on sys.path, where those names would shadow ours.
    consumer.mkpydir("client").joinpath("__init__.py").write_text('OWNER = "consumer client"\n')
    consumer.mkpydir("server").joinpath("__init__.py").write_text('OWNER = "consumer server"\n')
    consumer.makepyfile(mock_gateway='OWNER = "consumer mock_gateway"\n')
    consumer.makepyfile(
        test_consumer="""
        import client, mock_gateway, server
        from seed_data import SEED_DOCUMENTS, SEED_QUERY

        def test_their_modules_are_theirs():
            assert client.OWNER == "consumer client"
            assert server.OWNER == "consumer server"
            assert mock_gateway.OWNER == "consumer mock_gateway"

        def test_our_fixtures_still_work(rerank_client, rerank_mock_gateway):
            result = rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS, top_n=1)
            assert result.reranked_documents == ("Paris is the capital of France.",)
            assert type(rerank_client).__module__.startswith("rerank.client")
        """
    )
    result = run(consumer)
    result.assert_outcomes(passed=2)


# --- the production chain, and nothing one test does reaching the next ----------------------


def test_the_server_runs_the_production_chain(consumer: pytest.Pytester) -> None:
    consumer.makepyfile(
        test_chain="""
        import pytest
        from rerank.client import RateLimitedError
        from seed_data import SEED_DOCUMENTS, SEED_QUERY

        def test_a_repeated_request_is_answered_from_the_cache(rerank_client):
            first = rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)
            again = rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)
            assert (first.cached, again.cached) == (False, True)
            assert again.ranking == first.ranking

        def test_a_large_request_is_split_into_windows(rerank_mock_gateway, rerank_client):
            # "slow" answers normally, after a pause: it counts the gateway calls made.
            rerank_mock_gateway.fail_next("slow", delayMs=1, times=3)
            documents = [f"document {i}" for i in range(2500)]
            result = rerank_client.rerank(SEED_QUERY, documents, top_n=3)
            assert len(result.ranking) == 3
            assert rerank_mock_gateway.script.pending_faults == 0  # 1,000 + 1,000 + 500

        def test_retries_are_off_so_a_fault_scripted_once_is_seen_once(
            rerank_mock_gateway, rerank_client
        ):
            rerank_mock_gateway.fail_next("rate_limit", retryAfterMs=10, times=1)
            with pytest.raises(RateLimitedError):
                rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS)
            assert rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS).ranking
        """
    )
    result = run(consumer)
    result.assert_outcomes(passed=3)


def test_the_servers_settings_are_the_consumers_to_choose(consumer: pytest.Pytester) -> None:
    consumer.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def rerank_server_settings():
            return {"max_retries": 1, "retry_initial_backoff": 0.01}
        """
    )
    consumer.makepyfile(
        test_retries="""
        from seed_data import SEED_DOCUMENTS, SEED_QUERY

        def test_the_server_retries_now(rerank_mock_gateway, rerank_client):
            rerank_mock_gateway.fail_next("rate_limit", retryAfterMs=10, times=1)
            assert rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS).ranking
            assert rerank_mock_gateway.script.pending_faults == 0
        """
    )
    result = run(consumer)
    result.assert_outcomes(passed=1)


def test_the_cache_and_the_circuit_do_not_leak_between_tests(consumer: pytest.Pytester) -> None:
    consumer.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def rerank_server_settings():
            # Two gateway failures in a row open the circuit, for ten minutes.
            return {"breaker_window": 2, "breaker_failure_rate": 1.0, "breaker_cooldown": 600}
        """
    )
    consumer.makepyfile(
        test_isolation="""
        import pytest
        from rerank.client import RerankClient, UnavailableError
        from seed_data import SEED_DOCUMENTS, SEED_QUERY

        def test_1_caches_an_answer_and_opens_the_circuit(rerank_mock_gateway, rerank_server):
            # No client retries: each call is one attempt at the server.
            with RerankClient(rerank_server.target, service_config=None) as client:
                assert not client.rerank(SEED_QUERY, SEED_DOCUMENTS).cached
                assert client.rerank(SEED_QUERY, SEED_DOCUMENTS).cached
                rerank_mock_gateway.fail_next("error", status=503, times=2)
                for _ in range(2):
                    with pytest.raises(UnavailableError, match="Injected error"):
                        client.rerank(SEED_QUERY, SEED_DOCUMENTS[:2])
                with pytest.raises(UnavailableError, match="circuit open"):
                    client.rerank(SEED_QUERY, SEED_DOCUMENTS[:2])

        def test_2_starts_with_an_empty_cache_and_a_closed_circuit(rerank_client):
            assert not rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS).cached
            assert rerank_client.rerank(SEED_QUERY, SEED_DOCUMENTS[:2]).ranking
        """
    )
    result = run(consumer)
    result.assert_outcomes(passed=2)


def test_a_setting_out_of_range_fails_at_once_naming_it(consumer: pytest.Pytester) -> None:
    consumer.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def rerank_server_settings():
            return {"window_parallelism": 0}
        """
    )
    consumer.makepyfile(
        test_any="""
        def test_x(rerank_client):
            pass
        """
    )
    result = run(consumer)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*RERANK_WINDOW_PARALLELISM must be an integer in ?1, 64?*"])
