"""Benchmarks that drive a real daemon from outside, as producers do (``meterd bench ...``).

:mod:`meterd.bench.ingest`: end-to-end ingest throughput and ack latency over the producer
websocket, against a minimal baseline server (docs/ingest-bench.md).
"""
