"""``wattspan.span`` against a real PULL socket playing the agent (decoding with the
protocol), and with no agent, bad endpoints, threads, fork and OpenTelemetry."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from fakes.agent_socket import AgentSocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wattspan
from wattspan import client
from wattspan.protocol import Begin, End


@pytest.fixture
def sockdir():
    # ipc:// paths must be short (sun_path): not under pytest's long tmp_path.
    path = tempfile.mkdtemp(prefix="ws-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(sockdir):
    a = AgentSocket(f"ipc://{sockdir}/spans.sock")
    client.configure(a.endpoint)
    try:
        yield a
    finally:
        client.configure(None)
        a.close()


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.001)
    return predicate()


def pair(messages):
    begins = [m for m in messages if isinstance(m, Begin)]
    ends = [m for m in messages if isinstance(m, End)]
    assert len(begins) == len(ends)
    return begins, ends


def warnings_of(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "wattspan" and r.levelno >= logging.WARNING]


def one_warning(caplog) -> logging.LogRecord:
    """The process's single warning (the sender thread may log it a moment after counting)."""
    assert wait_for(lambda: warnings_of(caplog))
    time.sleep(0.01)
    records = warnings_of(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    return records[0]


# ---------------------------------------------------------------------------- basic spans


def test_context_manager_weight_set_at_end(agent):
    before = wattspan.client_stats()
    with wattspan.span("generate", request_id="r-17") as s:
        assert isinstance(s, wattspan.Span)
        s.weight = 42
    b, e = agent.recv(2)
    assert isinstance(b, Begin) and isinstance(e, End)
    assert (b.pid, b.name, b.request_id, b.weight) == (os.getpid(), "generate", "r-17", 1.0)
    assert (b.devices, b.attributes, b.trace_id) == ((), {}, None)
    assert (e.pid, e.span_id, e.weight, e.name) == (b.pid, b.span_id, 42.0, None)
    assert b.span_id == s.span_id
    assert 0 < b.t_ns <= e.t_ns <= time.monotonic_ns()
    after = wattspan.client_stats()
    assert after.sent - before.sent == 2 and after.dropped == before.dropped


def test_unchanged_weight_and_name_are_not_resent(agent):
    with wattspan.span("step", weight=3.0):
        pass
    b, e = agent.recv(2)
    assert b.weight == 3.0 and e.weight is None and e.name is None


def test_name_override_and_setters(agent):
    with wattspan.span("/items/42") as s:
        s.set_name("/items/{id}")
        s.set_weight(7)
    b, e = agent.recv(2)
    assert b.name == "/items/42" and e.name == "/items/{id}" and e.weight == 7.0


def test_span_object_can_be_reused(agent):
    s = wattspan.span("again")
    with s:
        pass
    first = s.span_id
    with s:
        pass
    b1, e1, b2, e2 = agent.recv(4)
    assert b1.span_id == e1.span_id == first and b2.span_id == e2.span_id != first


def test_exception_propagates_and_span_ends(agent):
    with pytest.raises(KeyError), wattspan.span("fails"):
        raise KeyError("boom")
    b, e = agent.recv(2)
    assert b.span_id == e.span_id


def test_devices_attributes_and_cuda_visible(agent, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(client, "_cvd", client._UNREAD)  # read again, as after a fork
    with wattspan.span("infer", devices=[0, "gpu:GPU-8f2", "cpu:0"],
                       attributes={"model": "llama", "batch": 8, "t": 0.5, "stream": True}):
        pass
    with wattspan.span("plain"):
        pass
    b, _, b2, _ = agent.recv(4)
    assert b.devices == (0, "gpu:GPU-8f2", "cpu:0")
    assert b.attributes == {"model": "llama", "batch": 8, "t": 0.5, "stream": True}
    assert b.cuda_visible_devices == "2,3" and b2.cuda_visible_devices == "2,3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(client, "_cvd", client._UNREAD)
    with wattspan.span("plain"):
        pass
    b3, _ = agent.recv(2)
    assert b3.cuda_visible_devices is None


def test_bad_arguments_are_repaired_never_raised(agent):
    before = wattspan.client_stats()

    class Weird:
        def __str__(self):
            return "weird"

    with wattspan.span("", request_id=123, weight=-1, devices=[True, -1, 5, "", Weird()],
                       attributes={"obj": Weird(), "nan": float("nan"), 7: "key",
                                   "big": 2**70}) as s:
        s.weight = float("inf")
    with wattspan.span("x" * 1000, request_id="r" * 1000, weight="2.5") as s2:
        s2.weight = object()
    with wattspan.span(None, weight=float("nan"), attributes={f"k{i}": i for i in range(50)}):
        pass
    with wattspan.span("s\udc80rrogate", request_id="\ud800"):
        pass
    with wattspan.span("huge", attributes={f"k{i}": "\U0001f600" * 1024 for i in range(32)}):
        pass
    b1, e1, b2, e2, b3, e3, b4, e4, b5, e5 = agent.recv(10)
    assert (b1.name, b1.request_id, b1.weight) == ("unnamed", "123", 1.0)
    assert b1.devices == (5, "weird")
    assert b1.attributes == {"obj": "weird", "nan": "nan", "7": "key", "big": str(2**70)}
    assert e1.weight is None
    assert (len(b2.name), len(b2.request_id), b2.weight, e2.weight) == (256, 256, 2.5, None)
    assert b3.name == "None" and b3.weight == 1.0 and len(b3.attributes) == 32
    assert b4.name == "s?rrogate" and b4.request_id == "?"
    assert b5.attributes == {}  # too large to send: left out
    after = wattspan.client_stats()
    assert after.errors - before.errors == 5
    assert after.dropped == before.dropped


_anything = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(),
    st.text(max_size=300), st.text(max_size=5).map(lambda t: t + "\ud800"),
    st.binary(max_size=5), st.lists(st.integers(), max_size=3))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=_anything, request_id=_anything, weight=_anything, final_weight=_anything,
       final_name=_anything,
       devices=st.none() | st.lists(_anything, max_size=70),
       attributes=st.none() | st.dictionaries(_anything.filter(lambda k: k is None or
                                                               not isinstance(k, list)),
                                              _anything, max_size=40))
def test_any_arguments_give_valid_messages(agent, name, request_id, weight, final_weight,
                                           final_name, devices, attributes):
    with wattspan.span(name, request_id=request_id, weight=weight, devices=devices,
                       attributes=attributes) as s:
        s.weight = final_weight
        if final_name is not None:
            s.name = final_name
    b, e = agent.recv(2)  # decode_frame validated both
    assert isinstance(b, Begin) and isinstance(e, End) and e.span_id == b.span_id


def test_internal_errors_are_swallowed_and_counted(agent, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(client, "_pack_begin", broken)
    before = wattspan.client_stats()
    with wattspan.span("x") as s:
        pass
    assert not s.is_recording
    after = wattspan.client_stats()
    assert (after.errors - before.errors, after.dropped - before.dropped) == (1, 2)
    one_warning(caplog)
    agent.nothing()


# ---------------------------------------------------------------------------- decorators


def test_decorator_sync(agent):
    @wattspan.span("work", request_id="job")
    def work(x, *, y=1):
        return x * y

    assert work(3, y=2) == 6 and work(4) == 4
    assert work.__name__ == "work"
    messages = agent.recv(4)
    begins, ends = pair(messages)
    assert [b.name for b in begins] == ["work", "work"]
    assert len({b.span_id for b in begins}) == 2


def test_decorator_async_and_async_with(agent):
    @wattspan.span("agen")
    async def agenerate(n):
        async with wattspan.span("inner") as s:
            s.weight = n
        return n + 1

    assert asyncio.run(agenerate(5)) == 6
    b_outer, b_inner, e_inner, e_outer = agent.recv(4)
    assert (b_outer.name, b_inner.name) == ("agen", "inner")
    assert e_inner.span_id == b_inner.span_id and e_inner.weight == 5.0
    assert e_outer.span_id == b_outer.span_id


def test_decorator_generators(agent):
    @wattspan.span("gen")
    def gen(n):
        yield from range(n)
        return "done"

    @wattspan.span("agen")
    async def agen(n):
        for i in range(n):
            yield i

    g = gen(3)
    assert next(g) == 0
    b = agent.recv(1)[0]
    assert b.name == "gen"  # open while the generator runs
    assert list(g) == [1, 2]
    assert agent.recv(1)[0].span_id == b.span_id

    async def consume():
        return [i async for i in agen(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    b, e = agent.recv(2)
    assert b.name == "agen" and e.span_id == b.span_id


# ---------------------------------------------------------------------------- no agent


def test_no_agent_drops_counts_and_warns_once(sockdir, monkeypatch, caplog):
    monkeypatch.setattr(client, "CONNECT_GRACE_MS", 0)
    client.configure(f"ipc://{sockdir}/absent.sock")
    try:
        before = wattspan.client_stats()
        t0 = time.perf_counter()
        for i in range(1000):
            with wattspan.span("generate", request_id=str(i)) as s:
                s.weight = 2.0
        per_span = (time.perf_counter() - t0) / 1000
        assert per_span < 1e-3
        assert wait_for(lambda: wattspan.client_stats().dropped - before.dropped == 2000)
        after = wattspan.client_stats()
        assert after.sent == before.sent and after.queued == 0
        assert "dropped" in one_warning(caplog).getMessage()
    finally:
        client.configure(None)


@pytest.mark.parametrize("endpoint", [
    "nonsense", "udp://127.0.0.1:1", "tcp://", "ipc://", "tcp://256.256.1.1:99999",
    "tcp://[::1", "tcp://127.0.0.1:notaport", "ipc:///no/such/dir/" + "x" * 200,
])
def test_bad_endpoint_never_raises(endpoint, monkeypatch, caplog):
    monkeypatch.setattr(client, "CONNECT_GRACE_MS", 0)
    client.configure(endpoint)
    try:
        before = wattspan.client_stats()
        for _ in range(20):
            with wattspan.span("x") as s:
                s.weight = 3.0
        assert wait_for(lambda: wattspan.client_stats().dropped - before.dropped == 40)
        assert wattspan.client_stats().sent == before.sent
        one_warning(caplog)
    finally:
        client.configure(None)


def test_closed_client_drops(agent, caplog):
    client.close()
    before = wattspan.client_stats()
    with wattspan.span("x"):
        pass
    assert wait_for(lambda: wattspan.client_stats().dropped - before.dropped == 2)
    agent.nothing()
    client.configure(agent.endpoint)
    with wattspan.span("y"):
        pass
    assert agent.recv(2)[0].name == "y"


def test_full_queue_drops_begin_and_end(agent, monkeypatch, caplog):
    monkeypatch.setattr(client, "QUEUE_MAX", 0)
    before = wattspan.client_stats()
    with wattspan.span("x") as s:
        s.weight = 5.0
    after = wattspan.client_stats()
    assert after.dropped - before.dropped == 2 and after.sent == before.sent
    one_warning(caplog)
    agent.nothing()


def test_events_wait_for_the_connection(sockdir, monkeypatch):
    """The first events of a process, sent before the connection is up, are not lost."""
    monkeypatch.setattr(client, "CONNECT_GRACE_MS", 5000)
    endpoint = f"ipc://{sockdir}/late.sock"
    client.configure(endpoint)
    try:
        with wattspan.span("early"):
            pass
        time.sleep(0.02)  # the agent starts a little later
        a = AgentSocket(endpoint)
        try:
            b, e = a.recv(2)
            assert b.name == "early" and e.span_id == b.span_id
        finally:
            a.close()
    finally:
        client.configure(None)


def test_begin_arrives_while_the_span_is_open(agent, monkeypatch):
    monkeypatch.setattr(client, "IDLE_PARK_S", 0.005)
    with wattspan.span("warm"):
        pass
    agent.recv(2)
    latencies = []
    for _ in range(5):
        assert wait_for(lambda: client._parked, 2.0)  # the next event must wake the sender
        t0 = time.monotonic()
        with wattspan.span("open"):
            agent.recv(1, timeout=1.0)
            latencies.append(time.monotonic() - t0)
        agent.recv(1)
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.1


def test_flush_and_stats(agent):
    before = wattspan.client_stats()
    for _ in range(10):
        with wattspan.span("x"):
            pass
    assert client.flush(2.0)
    agent.recv(20)
    after = wattspan.client_stats()
    assert (after.sent - before.sent, after.queued) == (20, 0)


# ------------------------------------------------------------------ threads, fork, exit


def test_threads(agent):
    n_threads, n_spans = 8, 500
    errors = []
    barrier = threading.Barrier(n_threads)

    def run(t):
        try:
            barrier.wait()
            for i in range(n_spans):
                with wattspan.span("t", request_id=f"{t}-{i}") as s:
                    s.weight = float(i)
        except BaseException as err:  # pragma: no cover
            errors.append(err)

    before = wattspan.client_stats()
    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    messages = agent.recv(2 * n_threads * n_spans, timeout=20.0)
    begins, ends = pair(messages)
    assert {b.request_id for b in begins} == {
        f"{t}-{i}" for t in range(n_threads) for i in range(n_spans)}
    assert len({b.span_id for b in begins}) == n_threads * n_spans
    weights = {b.span_id: float(b.request_id.split("-")[1]) for b in begins}
    for e in ends:
        assert e.weight == (weights[e.span_id] if weights[e.span_id] != 1.0 else None)
    after = wattspan.client_stats()
    assert after.sent - before.sent == len(messages) and after.dropped == before.dropped


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork(agent):
    with wattspan.span("parent-before"):
        pass
    agent.recv(2)  # the parent's socket and sender thread are up
    parent_stats = wattspan.client_stats()
    parent_sock = client._sock
    pid = os.fork()
    if pid == 0:  # the child: its own socket, never the parent's
        code = 3
        try:
            fresh = wattspan.client_stats()
            for i in range(10):
                with wattspan.span("child", request_id=str(i)) as s:
                    s.weight = 2.0
            ok = client.flush(5.0)
            stats = wattspan.client_stats()
            own = client._sock is not None and client._sock is not parent_sock
            client.close(linger_ms=2000)  # os._exit skips atexit: let ZeroMQ deliver first
            code = 0 if ok and own and fresh.sent == 0 and stats.sent == 20 else 1
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    messages = agent.recv(20)
    assert {m.pid for m in messages} == {pid}
    begins, _ = pair(messages)
    assert [b.request_id for b in begins] == [str(i) for i in range(10)]
    # The parent is unaffected: same socket, same counts, still sending.
    assert client._sock is parent_sock and wattspan.client_stats().sent == parent_stats.sent
    with wattspan.span("parent-after"):
        pass
    b, e = agent.recv(2)
    assert b.pid == e.pid == os.getpid() and b.name == "parent-after"


def _mp_child(n):
    for i in range(n):
        with wattspan.span("mp-child", request_id=str(i)):
            pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_multiprocessing_fork_child_is_flushed(agent):
    import multiprocessing

    with wattspan.span("parent"):
        pass
    agent.recv(2)
    proc = multiprocessing.get_context("fork").Process(target=_mp_child, args=(3,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    messages = agent.recv(6)
    assert {m.pid for m in messages} == {proc.pid}


def test_short_script_is_flushed_at_exit(agent):
    code = ("import wattspan\n"
            "with wattspan.span('script', request_id='s-1') as s:\n"
            "    s.weight = 4\n")
    env = dict(os.environ, WATTSPAN_ENDPOINT=agent.endpoint)
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    b, e = agent.recv(2)
    assert (b.name, b.request_id, e.weight, b.pid) == ("script", "s-1", 4.0, e.pid)


# ---------------------------------------------------------------------------- OpenTelemetry


def test_opentelemetry_ids_carried(agent):
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")  # a local provider: the global one is untouched
    with tracer.start_as_current_span("request") as otel_span:
        ctx = otel_span.get_span_context()
        with wattspan.span("generate"):
            pass
    with wattspan.span("outside"):
        pass
    b, _, b2, _ = agent.recv(4)
    assert b.trace_id == format(ctx.trace_id, "032x")
    assert b.otel_span_id == format(ctx.span_id, "016x")
    assert b2.trace_id is None and b2.otel_span_id is None


def test_opentelemetry_public_api_fallback(agent, monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setattr(client, "_otel_mode", 2)
    from opentelemetry import trace

    monkeypatch.setattr(client, "_otel_get_current_span", trace.get_current_span)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as otel_span, wattspan.span("generate"):
        pass
    b, _ = agent.recv(2)
    assert b.trace_id == format(otel_span.get_span_context().trace_id, "032x")
