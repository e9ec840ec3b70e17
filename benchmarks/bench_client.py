"""The application's cost of one ``wattspan.span`` (begin + end) next to an OpenTelemetry SDK
span (start + end, a TracerProvider with no span processors), measured in the same run.

The events really go out: an agent-like PULL socket in another process is bound and drained,
and the wattspan timings include handing every queued event to ZeroMQ (``client.flush()``
inside the timed region), so the sender thread's work is charged to wattspan.

Under the project's default ``--benchmark-disable`` each benchmark runs once, as a test, and
``test_span_cost_ratio`` checks the budget (wattspan <= 0.5 x OpenTelemetry). For numbers:

    python -m pytest benchmarks/bench_client.py --benchmark-enable -s
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import wattspan
from wattspan import client

BUDGET = 0.5  # wattspan span / OpenTelemetry span
SPANS_PER_ROUND = 2000
ROUNDS = 7

# The agent stand-in: receive every frame and count the messages in it (walking the headers,
# as decode_frame does, without building objects), until stdin closes; then print the count.
DRAIN = r"""
import struct, sys, threading, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.PULL)
sock.bind(sys.argv[1])
count = [0]
def run():
    u16 = struct.Struct("<H").unpack_from
    while True:
        try:
            frame = sock.recv()
        except zmq.ZMQError:
            return
        pos, n = 0, len(frame)
        while pos < n:
            if frame[pos + 1] == 1:
                pos += 38 + sum(struct.unpack_from("<HHH", frame, pos + 32))
            else:
                pos += 34 + u16(frame, pos + 32)[0]
            count[0] += 1
threading.Thread(target=run, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
print(count[0], flush=True)
"""


class Drain:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ws-bench-")
        self.endpoint = f"ipc://{self.dir}/spans.sock"
        self.proc = subprocess.Popen([sys.executable, "-c", DRAIN, self.endpoint],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def received(self) -> int:
        """Stop the drain; the number of messages it received."""
        out, _ = self.proc.communicate(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
        return int(out.strip())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def drain():
    d = Drain()
    client.configure(d.endpoint)
    d.base = wattspan.client_stats().sent
    for _ in range(100):  # connect, start the sender
        with wattspan.span("warm-up"):
            pass
    assert client.flush(5.0)
    try:
        yield d
    finally:
        client.flush(5.0)
        client.configure(None)
        d.kill()


@pytest.fixture
def tracer():
    from opentelemetry.sdk.trace import TracerProvider

    # A local provider with no span processors: the global provider is left alone.
    return TracerProvider().get_tracer("bench")


def wattspan_span():
    with wattspan.span("generate", request_id="r-17") as s:
        s.weight = 17.0


def otel_span_factory(tracer):
    def otel_span():
        tracer.start_span("generate").end()

    return otel_span


@pytest.mark.benchmark(group="span begin+end")
def test_wattspan_span(benchmark, drain):
    benchmark(wattspan_span)


@pytest.mark.benchmark(group="span begin+end")
def test_otel_sdk_span(benchmark, tracer):
    benchmark(otel_span_factory(tracer))


def _round(fn, n: int, flush: bool) -> float:
    """Seconds per call of ``n`` calls (plus sending what they queued, for wattspan)."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if flush:
        client.flush(5.0)
    return (time.perf_counter() - t0) / n


def measure_ratio(tracer, rounds: int = ROUNDS, n: int = SPANS_PER_ROUND):
    """(wattspan s/span, OTel s/span): the best of ``rounds`` interleaved rounds each."""
    otel_span = otel_span_factory(tracer)
    best_ws = best_otel = float("inf")
    gc.collect()
    for _ in range(rounds):
        best_ws = min(best_ws, _round(wattspan_span, n, flush=True))
        best_otel = min(best_otel, _round(otel_span, n, flush=False))
    return best_ws, best_otel


def test_span_cost_ratio(drain, tracer):
    before = wattspan.client_stats()
    ratio = float("inf")
    for _attempt in range(3):  # a burst of load on a busy machine: measure again
        ws, otel = measure_ratio(tracer)
        ratio = min(ratio, ws / otel)
        if ratio <= BUDGET:
            break
    assert client.flush(5.0)
    after = wattspan.client_stats()
    sent = after.sent - before.sent
    received = drain.received() - (before.sent - drain.base)  # less the warm-up
    print(f"\nwattspan span: {ws * 1e6:.2f} us, OpenTelemetry SDK span: {otel * 1e6:.2f} us, "
          f"ratio {ratio:.2f} (budget {BUDGET}); {sent} events sent, "
          f"{after.dropped - before.dropped} dropped, {received} received; pid {os.getpid()}")
    assert after.dropped == before.dropped and received == sent > 0
    assert ratio <= BUDGET
