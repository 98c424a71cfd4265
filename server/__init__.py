"""The gRPC reranking server: `python -m rerank.server` (or `rerank-server`).

A call travels, outermost first:

    door        (`grpc_door`)   gRPC's ends: a place among the calls in flight, metadata, status
    pipeline    (`pipeline`)    request id, server span, caller, access-log line
    admission   (`admission`)   calls and bytes in flight, refused at once when full
    validation  (`service`)     proto ⇄ domain, every field checked (`domain.check_request`)
    cache       (`cache`)       repeated requests from memory, one upstream call per key
    windows     (`windows`)     requests above a model's per-call limit, split and merged
    resilience  (`resilience`)  retries under a budget, a circuit breaker
    gateway     (`gateway`)     domain ⇄ the AI Gateway's HTTP protocol

The cache, windows and resilience are `domain.RerankerLayer`s around the gateway adapter.
`errors` is the one error tree, `status` the one table from it to gRPC codes (and the failures'
log lines), `calls` the per-call record the pipeline hands down, `metrics` is what the server
counts (`_prometheus` stores it and serves `/metrics`), `app` wires everything, `config` holds
the settings, `workers` runs several processes on one port.
"""
