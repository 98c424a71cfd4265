"""The rerank service's one import root.

`rerank.v1` is the generated contract, `rerank.contract` what both sides share beyond it;
`rerank.server`, `rerank.client`, `rerank.mock_gateway` and `rerank.testing` are the server,
the client and CLI, the mock gateway and the pytest plugin (the folder of each is mapped in
`pyproject.toml`).
"""
