"""`make bench`: a bounded, reproducible load benchmark of the rerank server.

It measures four paths in one run, on one machine, so their ratios mean something:

- direct: HTTP straight to the mock gateway process (the limit a proxy cannot beat);
- proxied: gRPC to the server process, which forwards over loopback HTTP to the same mock;
- bare: a bare `grpc.aio` proxy that makes one prebuilt POST to the mock per call (the least a
  Python proxy does: the headline is the server's CPU per call over this one's);
- echo: a bare `grpc.aio` echo service (the floor of one gRPC call's cost).

`--against REF` runs instead one proxied cell on this checkout's server and on REF's, in
alternating pairs (`bench.against`).

What each figure means, and how to run it: docs/performance.md.
"""
