"""The agent end to end: real sockets, real client, the fake GPU, in real time (few, short)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import zmq
from fakes.nvml_scenario import Gpu, Scenario, Segment

import wattspan
from wattspan import protocol
from wattspan.agent.service import Agent, AgentOptions
from wattspan.config import load
from wattspan.exporters.memory import MemoryExporter


def mono_from_unix(unix_ns: int) -> int:
    return unix_ns - (time.time_ns() - time.monotonic_ns())


@pytest.fixture
def agent_factory(tmp_path, monkeypatch):
    started = []

    def start(**options):
        monkeypatch.setenv("WATTSPAN_COLLECTORS", "nvml")
        endpoint = f"ipc://{tmp_path}/agent/spans.sock"
        memory = MemoryExporter()
        agent = Agent(load(), AgentOptions(endpoint=endpoint, **options), [memory])
        agent.start()
        # As on a host where the agent runs before the server: counters stepped once.
        agent.host.wait_settled(time.monotonic_ns())
        started.append(agent)
        wattspan.client.configure(endpoint)
        return agent, memory

    yield start
    for agent in started:
        agent.stop()
    wattspan.client.configure(None)


@pytest.mark.slow
def test_one_request_at_a_time_gets_the_boards_energy(native_impl, fake_gpus, agent_factory):
    sc = fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-solo", idle_w=60, segments=[
        Segment(0, 1500, 180), Segment(1500, 2600, 390), Segment(2600, 9000, 240)])]))
    agent, memory = agent_factory()
    for i in range(3):
        with wattspan.span("generate", request_id=f"r-{i}", devices=["gpu"]):
            time.sleep(1.0)
    wattspan.client.flush()
    agent.stop()
    spans = {s["request_id"]: s for s in memory.of_type("span")}
    assert sorted(spans) == ["r-0", "r-1", "r-2"]
    for record in spans.values():
        share = record["devices"]["gpu:GPU-solo"]
        a, b = mono_from_unix(record["start_unix_ns"]), mono_from_unix(record["end_unix_ns"])
        true = sc.true_energy_j(0, a, b)
        print(f"{record['request_id']}: {share['energy_j']:.3f} J vs {true:.3f} J "
              f"({100 * (share['energy_j'] - true) / true:+.3f}%)")
        assert abs(share["energy_j"] - true) / true < 0.01, (record, true)
        assert share["quality"] == "measured" and record["quality"] == "measured"
    # Conservation over everything the agent reported.
    devices = [d for d in memory.of_type("device") if d["device"] == "gpu:GPU-solo"]
    for d in devices:
        assert d["attributed_j"] + d["unattributed_j"] == pytest.approx(d["energy_j"], rel=1e-9)
    attributed = sum(d["attributed_j"] for d in devices)
    assert attributed == pytest.approx(sum(s["energy_j"] for s in spans.values()), rel=1e-9)


ASGI_APP = textwrap.dedent('''
    import asyncio, random, sys
    from wattspan.integrations.asgi import WattspanMiddleware

    async def app(scope, receive, send):
        await receive()
        await asyncio.sleep(0.2 + random.random() * 0.4)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    served = WattspanMiddleware(app)

    async def request(i):
        scope = {"type": "http", "method": "POST", "path": f"/v1/generate/{i}",
                 "headers": [(b"x-request-id", f"req-{i:02d}".encode())]}
        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}
        sent = []
        async def send(message):
            sent.append(message)
        await served(scope, receive, send)
        assert sent[0]["status"] == 200

    async def main():
        for burst in range(2):
            await asyncio.gather(*(request(burst * 8 + i) for i in range(8)))

    asyncio.run(main())
    print("served")
''')


@pytest.mark.slow
def test_asgi_app_under_the_agent_gets_a_record_per_request(fake_gpus, tmp_path):
    fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-web", segments=[Segment(0, 60_000, 300)])]))
    script = tmp_path / "app.py"
    script.write_text(ASGI_APP)
    out = tmp_path / "records.jsonl"
    env = dict(os.environ, WATTSPAN_COLLECTORS="nvml", WATTSPAN_PURE_PYTHON="1")
    result = subprocess.run([sys.executable, "-m", "wattspan", "run", "--jsonl", str(out), "--",
                             sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "served" in result.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    spans = {r["request_id"]: r for r in records if r["type"] == "span"}
    assert sorted(spans) == [f"req-{i:02d}" for i in range(16)]
    for record in spans.values():
        assert record["energy_j"] > 0 and record["quality"] == "measured"
        assert record["devices"]["gpu:GPU-web"]["energy_j"] > 0
    # The board draws 300 W throughout; requests active together share it equally
    # (the contract, computed here independently from the records' own times).
    edges = sorted({t for r in spans.values() for t in (r["start_unix_ns"], r["end_unix_ns"])})
    expected = dict.fromkeys(spans, 0.0)
    for a, b in zip(edges, edges[1:], strict=False):
        active = [k for k, r in spans.items() if r["start_unix_ns"] <= a and r["end_unix_ns"] >= b]
        for k in active:
            expected[k] += 300.0 * (b - a) * 1e-9 / len(active)
    for k, record in spans.items():
        assert record["devices"]["gpu:GPU-web"]["energy_j"] == pytest.approx(expected[k], rel=0.01)
    gpu = next(r for r in records if r["type"] == "device" and r["device"] == "gpu:GPU-web")
    assert gpu["attributed_j"] == pytest.approx(
        sum(r["devices"]["gpu:GPU-web"]["energy_j"] for r in spans.values()), rel=1e-9)
    assert gpu["attributed_j"] + gpu["unattributed_j"] == pytest.approx(gpu["energy_j"])
    assert "energy per span name" in result.stderr


WELL_BEHAVED = textwrap.dedent('''
    import os, sys, time, wattspan
    n = int(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    for i in range(n):
        with wattspan.span("well-behaved", request_id=f"ok-{i}"):
            pass
        if i % 100 == 99:
            left = deadline - time.monotonic()
            time.sleep(max(0.0, left / ((n - i) / 100)))
    assert wattspan.client.flush(5.0)
    stats = wattspan.client_stats()
    print(os.getpid(), stats.dropped, flush=True)
''')


def _spray(endpoint: str, seconds: float, sent: list[int]) -> None:
    """Random bytes and malformed messages, as fast as one socket sends them."""
    rng = random.Random(3)
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 1000)
    push.connect(endpoint)
    good = protocol.encode(protocol.Begin(pid=99999, span_id=1, t_ns=time.monotonic_ns(),
                                          name="x"))
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        kind = count % 4
        if kind == 0:
            frame = rng.randbytes(rng.randrange(1, 300))
        elif kind == 1:
            frame = bytearray(good)
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            frame = bytes(frame)
        elif kind == 2:
            frame = good[: rng.randrange(1, len(good))]
        else:  # a replay of the same begin over and over
            frame = good
        try:
            push.send(frame, zmq.NOBLOCK)
            count += 1
        except zmq.Again:
            time.sleep(0.0005)
    push.close(linger=0)
    sent.append(count)


@pytest.mark.slow
def test_garbage_at_full_speed_loses_no_well_behaved_span(fake_gpus, tmp_path):
    fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-g", segments=[Segment(0, 600_000, 250)])]))
    endpoint = f"ipc://{tmp_path}/agent/spans.sock"
    out = tmp_path / "records.jsonl"
    env = dict(os.environ, WATTSPAN_COLLECTORS="nvml")
    agent = subprocess.Popen([sys.executable, "-m", "wattspan", "agent", "--endpoint", endpoint,
                              "--jsonl", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in agent.stderr.readline()
        rss = [psutil.Process(agent.pid).memory_info().rss]
        sent: list[int] = []
        sprayer = threading.Thread(target=_spray, args=(endpoint, 10.0, sent))
        sprayer.start()
        client = tmp_path / "client.py"
        client.write_text(WELL_BEHAVED)
        well = subprocess.run([sys.executable, str(client), "10000", "8"],
                              env=dict(env, WATTSPAN_ENDPOINT=endpoint), capture_output=True,
                              text=True, timeout=120)
        assert well.returncode == 0, well.stderr
        client_pid, dropped = map(int, well.stdout.split())
        assert dropped == 0
        sprayer.join()
        rss.append(psutil.Process(agent.pid).memory_info().rss)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    records = [json.loads(line) for line in Path(out).read_text().splitlines()]
    ours = [r for r in records if r["type"] == "span" and r["pid"] == client_pid]
    assert len(ours) == 10_000
    assert len({r["request_id"] for r in ours}) == 10_000
    assert all(r["energy_j"] is not None for r in ours)
    assert sent[0] > 10_000  # the sprayer really sprayed
    assert "malformed" in stderr
    # Bounded memory: garbage and replays cost the agent nothing that stays.
    print(f"garbage frames sent: {sent[0]}, agent RSS {rss[0] / 2**20:.1f} -> "
          f"{rss[1] / 2**20:.1f} MiB")
    assert rss[1] - rss[0] < 40 * 2**20, rss


@pytest.mark.slow
def test_spans_default_to_the_gpus_their_process_runs_on_and_carry_trace_ids(
        fake_gpus, agent_factory):
    from fakes.nvml_scenario import Process
    from opentelemetry.sdk.trace import TracerProvider

    fake_gpus(Scenario(gpus=[
        Gpu.h100(uuid="GPU-other", segments=[Segment(0, 60_000, 200)]),
        Gpu.h100(uuid="GPU-mine", segments=[Segment(0, 60_000, 300)],
                 processes=[Process(os.getpid(), 2048)]),
    ]))
    agent, memory = agent_factory()
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("http request") as otel_span:
        with wattspan.span("generate", request_id="traced"):
            time.sleep(0.3)
    with wattspan.span("explicit", request_id="both", devices=["gpu"]):
        time.sleep(0.3)
    wattspan.client.flush()
    agent.stop()
    spans = {s["request_id"]: s for s in memory.of_type("span")}
    assert set(spans["traced"]["devices"]) == {"gpu:GPU-mine"}
    assert set(spans["both"]["devices"]) == {"gpu:GPU-mine", "gpu:GPU-other"}
    context = otel_span.get_span_context()
    assert spans["traced"]["trace_id"] == f"{context.trace_id:032x}"
    assert spans["traced"]["otel_span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in spans["both"]


def test_agent_refuses_a_public_tcp_endpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "wattspan", "agent", "--endpoint",
                             "tcp://0.0.0.0:5599"], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, WATTSPAN_COLLECTORS="cpu_model"))
    assert result.returncode == 2
    assert "allow-remote" in result.stderr and "Traceback" not in result.stderr
