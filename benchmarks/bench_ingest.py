"""Benchmark of span ingest: decoding batched frames as the client sends them and keeping the
span table, for 8 GPUs with 8 spans in flight on each (the other half of the agent's
>= 50,000 spans/s target; ``bench_attribution.py`` measures the attribution).

    python -m pytest benchmarks/bench_ingest.py --benchmark-enable -s
"""

from __future__ import annotations

import time

from wattspan import protocol
from wattspan.agent.ingest import SpanTable

SPANS = 20_000
BATCH = 64  # messages per frame, as the client's sender thread batches them


def _frames(now_ns: int) -> list[bytes]:
    messages = []
    for i in range(SPANS):
        start = now_ns - 10**9 + i * 1000
        messages.append(protocol.encode(protocol.Begin(
            pid=1000 + i % 8, span_id=i, t_ns=start, name="generate", request_id=f"r-{i}")))
        messages.append(protocol.encode(protocol.End(
            pid=1000 + i % 8, span_id=i, t_ns=start + 50_000, weight=17.0)))
    return [b"".join(messages[k:k + BATCH]) for k in range(0, len(messages), BATCH)]


def _ingest(frames) -> SpanTable:
    table = SpanTable(lambda msg, default=False: (f"gpu:GPU-{msg.pid % 8}", "cpu:0"))
    for frame in frames:
        table.handle_frame(frame)
    return table


def test_ingest_rate(benchmark):
    frames = _frames(time.monotonic_ns())
    cpu0 = time.process_time()
    table = benchmark.pedantic(_ingest, args=(frames,), rounds=3, iterations=1)
    per_round = (time.process_time() - cpu0) / 3
    assert len(table.ended) == SPANS and table.stats.malformed == 0
    rate = SPANS / per_round
    benchmark.extra_info["spans_per_cpu_second"] = rate
    print(f"\ningest: {rate:,.0f} spans/s of CPU (decode + table, batches of {BATCH})")
