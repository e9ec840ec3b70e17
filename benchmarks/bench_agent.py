"""The agent's whole span path, as one number: frames decoded from the socket's batches,
the span table, and attribution window by window, for 8 GPUs with 8 spans of ~50 ms in
flight on each (target: >= 50,000 spans/s on one core).

    python -m pytest benchmarks/bench_agent.py --benchmark-enable -s
"""

from __future__ import annotations

import time

import bench_attribution as data
import pytest

from wattspan import protocol
from wattspan.agent.attribution import Attributor
from wattspan.agent.ingest import SpanTable

BATCH = 64


def _frames(spans) -> list[tuple[int, bytes]]:
    """(time the frame is sent, frame): begins at their start, ends at their end."""
    events = []
    for s in spans:
        events.append((s.start_ns, protocol.encode(protocol.Begin(
            pid=s.pid, span_id=s.span_id, t_ns=s.start_ns, name=s.name,
            request_id=f"r-{s.span_id}", weight=1.0, devices=s.devices))))
        events.append((s.end_ns, protocol.encode(protocol.End(
            pid=s.pid, span_id=s.span_id, t_ns=s.end_ns, weight=s.weight))))
    events.sort(key=lambda e: e[0])
    return [(events[k + min(BATCH, len(events) - k) - 1][0],
             b"".join(m for _, m in events[k:k + BATCH])) for k in range(0, len(events), BATCH)]


def run_agent_path(timeline, frames, start_ns, end_ns) -> int:
    now = [start_ns]  # the agent's clock: the end of the window being received
    table = SpanTable(lambda msg, default=False: tuple(msg.devices), max_spans=1_000_000,
                      clock=lambda: now[0])
    attributor = Attributor(timeline)
    i = 0
    taken = 0
    a = start_ns
    while a < end_ns:
        b = min(a + data.WINDOW_NS, end_ns)
        now[0] = b
        while i < len(frames) and frames[i][0] <= b:
            table.handle_frame(frames[i][1])
            i += 1
        active = [s for s in table.ended if s.end_ns > a] + \
                 [s for s in table.open.values() if s.start_ns < b]
        attributor.advance(b, active, start_ns=a)
        keep = []
        while table.ended:
            span = table.ended.popleft()
            if span.end_ns <= b:
                attributor.take(span.key)
                taken += 1
            else:
                keep.append(span)
        table.ended.extend(keep)
        a = b
    return taken


def test_ingest_and_attribution(native_impl, benchmark):
    impl = native_impl.IMPLEMENTATION
    seconds = data._seconds(benchmark, 20, 3)
    start = data.BASE_NS
    end = start + seconds * data.S
    readings = {d: data.gpu_readings(d, start - data.S, end + data.S, i)
                for i, d in enumerate(data.gpu_ids())}
    timeline = data.make_timeline(readings)
    spans = data.gpu_spans(start, end, 1)
    frames = _frames(spans)
    cpu0 = time.process_time()
    taken = benchmark.pedantic(run_agent_path, args=(timeline, frames, start, end), rounds=1,
                               iterations=1)
    cpu = time.process_time() - cpu0
    assert taken > 0.95 * len(spans)
    data._report(benchmark, f"ingest + attribution ({impl})", taken, cpu)


if __name__ == "__main__":
    pytest.main([__file__, "--benchmark-enable", "-s"])
