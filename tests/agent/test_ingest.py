"""Span ingest: validation, the span table's bookkeeping, and the socket's doors."""

from __future__ import annotations

import os
import stat
import time

import pytest
import zmq

from wattspan import protocol
from wattspan.agent.ingest import EndpointError, SpanSocket, SpanTable, check_endpoint
from wattspan.protocol import Begin, End

NOW = 1_000_000 * 10**9


def table(max_spans=100):
    return SpanTable(lambda msg, default=False: ("gpu:GPU-a",), max_spans=max_spans,
                     clock=lambda: NOW)


def begin(span_id=1, t=NOW - 10**9, pid=42, **kw):
    return protocol.encode(Begin(pid=pid, span_id=span_id, t_ns=t, name="generate", **kw))


def end(span_id=1, t=NOW, pid=42, **kw):
    return protocol.encode(End(pid=pid, span_id=span_id, t_ns=t, **kw))


def test_begin_then_end_yields_an_ended_span_with_the_final_weight_and_name():
    t = table()
    t.handle_frame(begin(request_id="r-1", weight=1.0, attributes={"model": "llama"}))
    assert list(t.open) == [(42, 1)]
    t.handle_frame(end(weight=37.0, name="/v1/generate/{model}"))
    assert not t.open
    span = t.ended[0]
    assert (span.request_id, span.weight, span.name) == ("r-1", 37.0, "/v1/generate/{model}")
    assert span.devices == ("gpu:GPU-a",) and span.attributes == {"model": "llama"}
    assert span.end_ns - span.start_ns == 10**9
    assert t.stats.begins == t.stats.ends == 1


def test_a_frame_may_carry_several_messages():
    t = table()
    t.handle_frame(begin(1) + begin(2) + end(1))
    assert list(t.open) == [(42, 2)] and len(t.ended) == 1


@pytest.mark.parametrize("frame, counter", [
    (b"", "malformed"),
    (b"\xff" * 40, "malformed"),
    (b"\x01", "malformed"),
])
def test_garbage_is_counted_not_raised(frame, counter):
    t = table()
    t.handle_frame(frame)
    assert getattr(t.stats, counter) == 1
    assert not t.open and not t.ended


def test_replayed_begin_and_end_are_dropped():
    t = table()
    t.handle_frame(begin())
    t.handle_frame(begin())
    t.handle_frame(end())
    t.handle_frame(end())
    t.handle_frame(begin())  # the same span again after it finished
    assert t.stats.replayed == 3
    assert len(t.ended) == 1 and not t.open


def test_end_without_begin_is_an_orphan():
    t = table()
    t.handle_frame(end(span_id=9))
    assert t.stats.orphan_ends == 1 and not t.ended


def test_end_before_begin_is_out_of_order():
    t = table()
    t.handle_frame(begin(t=NOW - 10))
    t.handle_frame(end(t=NOW - 20))
    assert t.stats.out_of_order == 1 and not t.ended and not t.open


@pytest.mark.parametrize("t_ns", [NOW - 3600 * 10**9, NOW + 60 * 10**9])
def test_implausible_timestamps_are_dropped(t_ns):
    t = table()
    t.handle_frame(begin(t=t_ns))
    assert t.stats.implausible_time == 1 and not t.open


def test_the_table_is_bounded():
    t = table(max_spans=3)
    for i in range(5):
        t.handle_frame(begin(span_id=i))
    assert len(t.open) == 3 and t.stats.table_full == 2


def test_spans_never_ended_expire_as_incomplete():
    t = table()
    t.handle_frame(begin(span_id=1, t=NOW - 500 * 10**9))
    t.handle_frame(begin(span_id=2, t=NOW - 5 * 10**9))
    expired = t.expire(NOW - 60 * 10**9, NOW)
    assert [s.span_id for s in expired] == [1]
    assert expired[0].status == "incomplete" and expired[0].end_ns == NOW
    assert list(t.open) == [(42, 2)]


def test_unknown_devices_fall_back_to_the_default_set():
    def resolve(msg, default=False):
        if msg.devices and not default:
            raise ValueError("no device matches 'gpu:GPU-nope'")
        return ("cpu:0",)

    t = SpanTable(resolve, clock=lambda: NOW)
    t.handle_frame(begin(devices=("gpu:GPU-nope",)))
    assert t.open[(42, 1)].devices == ("cpu:0",)


# --- endpoints


@pytest.mark.parametrize("endpoint", ["ipc:///run/wattspan/spans.sock", "tcp://127.0.0.1:5555",
                                      "tcp://localhost:5555", "tcp://[::1]:5555"])
def test_local_endpoints_are_accepted(endpoint):
    assert check_endpoint(endpoint, allow_remote=False) == endpoint


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555"])
def test_public_interfaces_need_allow_remote(endpoint):
    with pytest.raises(EndpointError, match="allow-remote"):
        check_endpoint(endpoint, allow_remote=False)
    assert check_endpoint(endpoint, allow_remote=True) == endpoint


@pytest.mark.parametrize("endpoint", ["udp://127.0.0.1:1", "ipc://", "tcp://127.0.0.1", "spans"])
def test_malformed_endpoints(endpoint):
    with pytest.raises(EndpointError):
        check_endpoint(endpoint, allow_remote=False)


def test_unix_socket_is_private_and_replaces_a_stale_one(tmp_path):
    path = tmp_path / "run" / "spans.sock"
    first = SpanSocket(f"ipc://{path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    first.socket.close(linger=0)  # leaves the socket file behind, as a crash would
    second = SpanSocket(f"ipc://{path}")
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(f"ipc://{path}")
    push.send(begin())
    assert second.receive(2000) == [begin()]
    push.close(linger=0)
    second.close()
    assert not path.exists()


def test_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / "spans.sock"
    path.write_text("precious")
    with pytest.raises(EndpointError, match="not a socket"):
        SpanSocket(f"ipc://{path}")
    assert path.read_text() == "precious"


def test_refuses_a_world_writable_directory(tmp_path):
    directory = tmp_path / "open"
    directory.mkdir()
    os.chmod(directory, 0o777)
    with pytest.raises(EndpointError, match="writable by everyone"):
        SpanSocket(f"ipc://{directory}/spans.sock")


def test_unknown_socket_group(tmp_path):
    with pytest.raises(EndpointError, match="does not exist"):
        SpanSocket(f"ipc://{tmp_path}/s/spans.sock", group="no-such-group-wattspan")


def test_oversized_frames_are_refused_by_the_socket(tmp_path):
    sock = SpanSocket(f"ipc://{tmp_path}/s/spans.sock")
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(sock.endpoint)
    push.send(b"x" * (protocol.MAX_FRAME_BYTES + 1))
    deadline = time.monotonic() + 0.5
    got = []
    while time.monotonic() < deadline:
        got += sock.receive(50)
    assert got == []
    push.close(linger=0)
    sock.close()
