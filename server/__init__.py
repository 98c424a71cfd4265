"""The gRPC reranking server: `python -m rerank.server` (or `rerank-server`).

Layout, in the order a call travels: `service` (proto ⇄ domain) → `domain` (values and rules)
→ `gateway` (domain ⇄ the AI Gateway's HTTP protocol). `errors` is the one error tree,
`status` the one table from it to gRPC codes, `app` the wiring, `config` the settings.
"""
