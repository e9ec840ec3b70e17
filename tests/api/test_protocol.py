"""The wire format between applications and the agent: round trips, every validation error,
and fuzzing (any bytes give a message or ProtocolError, nothing else)."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wattspan import protocol
from wattspan.protocol import (
    BEGIN_STRUCT,
    END_STRUCT,
    Begin,
    End,
    ProtocolError,
    decode,
    decode_frame,
    default_endpoint,
    encode,
)

T = 200 * 86_400 * 10**9  # CLOCK_MONOTONIC after 200 days


def begin(**kw) -> Begin:
    fields = dict(pid=4242, span_id=17, t_ns=T, name="generate")
    fields.update(kw)
    return Begin(**fields)


def end(**kw) -> End:
    fields = dict(pid=4242, span_id=17, t_ns=T + 5)
    fields.update(kw)
    return End(**fields)


def raw_begin(*, version=1, kind=1, flags=0, span_id=1, t_ns=T, pid=42, weight=1.0,
              name=b"n", rid=b"", extras=b"", lengths=None) -> bytes:
    name_len, rid_len, extras_len = lengths or (len(name), len(rid), len(extras))
    return BEGIN_STRUCT.pack(version, kind, flags, span_id, t_ns, pid, weight, name_len,
                             rid_len, extras_len) + name + rid + extras


def raw_end(*, flags=0, span_id=1, t_ns=T, pid=42, weight=0.0, name=b"") -> bytes:
    return END_STRUCT.pack(1, 2, flags, span_id, t_ns, pid, weight, len(name)) + name


def extras(obj) -> bytes:
    return json.dumps(obj).encode()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("message", [
    begin(),
    begin(request_id="r-17", weight=0.0),
    begin(name="é" * 256, request_id="ü" * 256, weight=123.5, span_id=2**64 - 1,
          t_ns=2**63 - 1, pid=2**31 - 1),
    begin(devices=("gpu:GPU-8f2", 0, 3, "cpu:0", "neuron:0"),
          attributes={"model": "llama", "tokens": 12, "p": 0.5, "stream": True, "neg": -3},
          trace_id="0af7651916cd43dd8448eb211c80319c", otel_span_id="b7ad6b7169203331",
          cuda_visible_devices="2,3"),
    begin(cuda_visible_devices=""),
    end(),
    end(weight=17.0),
    end(weight=0.0, name="/items/{id}"),
    end(name="x"),
])
def test_round_trip(message):
    frame = encode(message)
    assert decode(frame) == message
    assert decode_frame(frame) == [message]
    assert decode(bytearray(frame)) == message
    assert decode(memoryview(frame)) == message


def test_header_layout():
    frame = encode(begin(request_id="r", weight=2.5))
    version, kind, flags, span_id, t_ns, pid, weight = struct.unpack_from("<BBHQqid", frame)
    assert (version, kind, flags, span_id, t_ns, pid, weight) == (1, 1, 0, 17, T, 4242, 2.5)
    assert frame[32:38] == struct.pack("<HHH", 8, 1, 0)
    assert frame[38:] == b"generate" + b"r"
    assert len(encode(end())) == 34
    assert encode(end(weight=3.0))[2:4] == b"\x01\x00"


def test_common_begin_has_no_json():
    frame = encode(begin(request_id="r-1"))
    assert struct.unpack_from("<H", frame, 36) == (0,)
    assert b"{" not in frame


def test_frame_of_several_messages():
    messages = [begin(span_id=i, request_id=f"r{i}") for i in range(5)]
    messages += [end(span_id=i, weight=float(i)) for i in range(5)]
    frame = b"".join(encode(m) for m in messages)
    assert decode_frame(frame) == messages
    with pytest.raises(ProtocolError, match="trailing bytes"):
        decode(frame)


def test_frame_errors():
    good = encode(begin())
    with pytest.raises(ProtocolError, match="empty frame"):
        decode_frame(b"")
    with pytest.raises(ProtocolError, match="message 1: truncated"):
        decode_frame(good + good[:-1])
    with pytest.raises(ProtocolError, match="message 1: wrong version"):
        decode_frame(good + b"\x02" + good[1:])
    with pytest.raises(ProtocolError, match="frame oversized"):
        decode_frame(good * (protocol.MAX_FRAME_BYTES // len(good) + 1))
    with pytest.raises(ProtocolError, match="not bytes"):
        decode_frame("text")


# ------------------------------------------------------------------------------ validation

BAD_FRAMES = {
    "wrong version": raw_begin(version=2),
    "wrong version 0": raw_begin(version=0),
    "unknown kind": raw_begin(kind=3),
    "truncated": raw_begin()[:-1],
    "truncated header": raw_begin()[:20],
    "truncated one byte": b"\x01",
    "truncated empty": b"",
    "truncated end": raw_end()[:33],
    "truncated end name": raw_end(name=b"abc")[:-1],
    "trailing bytes": raw_begin() + b"\x00",
    "trailing bytes end": raw_end() + b"\x00",
    "oversized": raw_begin(name=b"x" * 200, extras=b" " * 65_400),
    "bad UTF-8 in name": raw_begin(name=b"\xff\xfe"),
    "bad UTF-8 in request_id": raw_begin(rid=b"\xc3"),
    "bad UTF-8 in extras": raw_begin(extras=b'{"attributes":{"a":"\xff"}}'),
    "bad UTF-8 surrogate": raw_begin(name=b"x" + b"\xed\xa0\x80"),
    "empty name": raw_begin(name=b""),
    "name too long": raw_begin(name=b"x" * 257),
    "end name too long": raw_end(name=b"x" * 257),
    "request_id too long": raw_begin(rid=b"r" * 257),
    "weight not finite nan": raw_begin(weight=math.nan),
    "weight not finite inf": raw_begin(weight=math.inf),
    "weight negative": raw_begin(weight=-1.0),
    "end weight negative": raw_end(flags=1, weight=-0.5),
    "end weight nan": raw_end(flags=1, weight=math.nan),
    "end weight without flag": raw_end(weight=3.0),
    "unknown flags begin": raw_begin(flags=1),
    "unknown flags end": raw_end(flags=2),
    "t_ns not positive": raw_begin(t_ns=0),
    "t_ns negative": raw_end(t_ns=-5),
    "pid not positive": raw_begin(pid=0),
    "pid negative": raw_end(pid=-1),
    "too many devices": raw_begin(extras=extras({"devices": list(range(65))})),
    "device too long": raw_begin(extras=extras({"devices": ["g" * 129]})),
    "empty device": raw_begin(extras=extras({"devices": [""]})),
    "device index negative": raw_begin(extras=extras({"devices": [-1]})),
    "device index huge": raw_begin(extras=extras({"devices": [2**31]})),
    "device bool": raw_begin(extras=extras({"devices": [True]})),
    "device float": raw_begin(extras=extras({"devices": [1.5]})),
    "devices not a list": raw_begin(extras=extras({"devices": "gpu:0"})),
    "too many attributes": raw_begin(
        extras=extras({"attributes": {f"k{i}": i for i in range(33)}})),
    "non-scalar attribute list": raw_begin(extras=extras({"attributes": {"a": [1]}})),
    "non-scalar attribute dict": raw_begin(extras=extras({"attributes": {"a": {}}})),
    "non-scalar attribute null": raw_begin(extras=extras({"attributes": {"a": None}})),
    "attribute nan": raw_begin(extras=b'{"attributes":{"a":NaN}}'),
    "attribute infinity": raw_begin(extras=b'{"attributes":{"a":1e999}}'),
    "attribute int range": raw_begin(extras=extras({"attributes": {"a": 2**63}})),
    "attribute empty key": raw_begin(extras=extras({"attributes": {"": 1}})),
    "attribute long key": raw_begin(extras=extras({"attributes": {"k" * 129: 1}})),
    "attribute long value": raw_begin(extras=extras({"attributes": {"k": "v" * 1025}})),
    "attributes not an object": raw_begin(extras=extras({"attributes": [1]})),
    "bad extras JSON": raw_begin(extras=b"{not json"),
    "extras deeply nested": raw_begin(extras=b"[" * 60_000),
    "extras huge int": raw_begin(extras=b'{"attributes":{"a":' + b"9" * 5000 + b"}}"),
    "extras not an object": raw_begin(extras=b"[1]"),
    "unknown extra": raw_begin(extras=extras({"colour": "red"})),
    "bad trace_id": raw_begin(extras=extras({"trace_id": "xyz", "otel_span_id": "1" * 16})),
    "trace_id upper": raw_begin(extras=extras({"trace_id": "A" * 32, "otel_span_id": "1" * 16})),
    "trace_id zero": raw_begin(extras=extras({"trace_id": "0" * 32, "otel_span_id": "1" * 16})),
    "bad otel_span_id": raw_begin(extras=extras({"trace_id": "1" * 32, "otel_span_id": 5})),
    "trace_id alone": raw_begin(extras=extras({"trace_id": "1" * 32})),
    "bad cuda_visible_devices": raw_begin(extras=extras({"cuda_visible_devices": 3})),
    "cuda_visible_devices long": raw_begin(extras=extras({"cuda_visible_devices": "0" * 5000})),
    "lengths past the end": raw_begin(lengths=(1, 0, 500)),
}


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_invalid_frames_raise_protocol_error(frame):
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert isinstance(info.value, ValueError)
    assert info.value.reason and len(info.value.reason) < 80
    with pytest.raises(ProtocolError):
        decode_frame(frame)


@pytest.mark.parametrize(("frame", "reason"), [
    (raw_begin(version=7), "wrong version 7"),
    (raw_begin(kind=9), "unknown kind 9"),
    (raw_begin()[:-1], "truncated"),
    (raw_begin() + b"!", "trailing bytes"),
    (raw_begin(name=b"x" * 200, extras=b" " * 65_400), "oversized"),
    (raw_begin(name=b"\xff"), "bad UTF-8 in name"),
    (raw_begin(name=b""), "empty name"),
    (raw_begin(name=b"x" * 257), "name too long"),
    (raw_begin(rid=b"r" * 257), "request_id too long"),
    (raw_begin(weight=math.inf), "weight not finite"),
    (raw_begin(weight=-2.0), "weight negative"),
    (raw_begin(extras=extras({"devices": list(range(65))})), "too many devices"),
    (raw_begin(extras=extras({"devices": ["d" * 129]})), "device too long"),
    (raw_begin(extras=extras({"attributes": {f"k{i}": 1 for i in range(33)}})),
     "too many attributes"),
    (raw_begin(extras=extras({"attributes": {"a": [1]}})), "attribute value not a scalar"),
    (raw_begin(t_ns=0), "t_ns not positive"),
    (raw_begin(pid=0), "pid not positive"),
])
def test_reasons(frame, reason):
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.reason == reason


def test_not_bytes():
    for value in ("text", None, 5, [1, 2]):
        with pytest.raises(ProtocolError, match="not bytes"):
            decode(value)


def test_limits_accepted():
    message = begin(
        name="n" * 256, request_id="r" * 256,
        devices=tuple(f"gpu:{'u' * 124}" for _ in range(64)),
        attributes={f"k{i:03d}{'x' * 124}": "v" * 1024 for i in range(32)},
    )
    assert decode(encode(message)) == message


@pytest.mark.parametrize(("message", "reason"), [
    (begin(name=""), "empty name"),
    (begin(name="x" * 257), "name too long"),
    (begin(request_id=""), "empty request_id"),
    (begin(request_id="r" * 257), "request_id too long"),
    (begin(weight=-1.0), "weight negative"),
    (begin(weight=math.nan), "weight not finite"),
    (begin(pid=0), "pid out of range"),
    (begin(t_ns=0), "t_ns out of range"),
    (begin(span_id=-1), "span_id out of range"),
    (begin(devices=("",)), "empty device"),
    (begin(attributes={"a": object()}), "attribute value not a scalar"),
    (begin(trace_id="1" * 32), "trace_id without otel_span_id"),
    (end(weight=math.inf), "weight not finite"),
    (end(name=""), "empty name"),
    ("not a message", "not a message"),
])
def test_encode_validates(message, reason):
    with pytest.raises(ProtocolError) as info:
        encode(message)
    assert info.value.reason == reason


def test_encode_oversized():
    message = begin(attributes={f"k{i}": "\U0001f600" * 1024 for i in range(32)})
    with pytest.raises(ProtocolError, match="oversized"):
        encode(message)


def test_dataclasses_are_frozen_and_slotted():
    b = begin()
    with pytest.raises(AttributeError):
        b.name = "other"  # type: ignore[misc]
    assert not hasattr(b, "__dict__") and not hasattr(end(), "__dict__")
    assert hash(end()) == hash(end())
    assert hash(b) == hash(begin())  # attributes are left out of the hash


# ---------------------------------------------------------------------------------- fuzzing

_texts = st.text(min_size=1, max_size=20)
_scalars = st.one_of(st.text(max_size=30), st.booleans(),
                     st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False,
                                                                 allow_infinity=False))
_hex = st.sampled_from("0123456789abcdef")

valid_begins = st.builds(
    Begin,
    pid=st.integers(1, 2**31 - 1), span_id=st.integers(0, 2**64 - 1),
    t_ns=st.integers(1, 2**63 - 1), name=_texts,
    request_id=st.none() | _texts,
    weight=st.floats(min_value=0.0, max_value=1e300, allow_nan=False, allow_infinity=False),
    devices=st.lists(st.one_of(_texts, st.integers(0, 2**31 - 1)), max_size=5).map(tuple),
    attributes=st.dictionaries(_texts, _scalars, max_size=5),
    cuda_visible_devices=st.none() | st.text(max_size=10),
)
valid_ends = st.builds(
    End, pid=st.integers(1, 2**31 - 1), span_id=st.integers(0, 2**64 - 1),
    t_ns=st.integers(1, 2**63 - 1),
    weight=st.none() | st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
    name=st.none() | _texts,
)
messages = st.one_of(valid_begins, valid_ends)


def _surrogate_free(message) -> bool:
    try:
        encode(message)
    except ProtocolError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(messages)
def test_fuzz_round_trip(message):
    if not _surrogate_free(message):
        return
    assert decode(encode(message)) == message


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=6))
def test_fuzz_frame_round_trip(batch):
    batch = [m for m in batch if _surrogate_free(m)]
    if batch:
        assert decode_frame(b"".join(encode(m) for m in batch)) == batch


def _only_protocol_errors(frame: bytes) -> None:
    for fn in (decode, decode_frame):
        try:
            result = fn(frame)
        except ProtocolError as err:
            assert isinstance(err.reason, str) and err.reason
            # Every input is classified by the validation itself, not by decode's safety net
            # for unexpected exceptions.
            assert not err.reason.startswith("malformed"), err.reason
        else:
            assert isinstance(result, Begin | End | list)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(frame):
    _only_protocol_errors(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_with_valid_prefix(tail):
    # A plausible header, so the fuzzing reaches the body parsing.
    _only_protocol_errors(b"\x01" + bytes([1 + len(tail) % 2]) + tail)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_fuzz_mutated_messages(message, data):
    if not _surrogate_free(message):
        return
    frame = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and frame:
            frame[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del frame[pos:]
        elif op == "insert":
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and frame:
            del frame[pos]
    _only_protocol_errors(bytes(frame))


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5)
                    | st.integers(),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=5), children, max_size=3),
                    max_leaves=10))
def test_fuzz_extras_json(obj):
    for value in (obj, {"attributes": obj}, {"devices": obj}, {"trace_id": obj,
                                                                 "otel_span_id": obj}):
        try:
            blob = json.dumps(value).encode()
        except (ValueError, TypeError):
            continue
        if len(blob) < 60_000:
            _only_protocol_errors(raw_begin(extras=blob))


# -------------------------------------------------------------------------------- endpoint


def test_default_endpoint_from_environment(monkeypatch):
    monkeypatch.setenv("WATTSPAN_ENDPOINT", "tcp://127.0.0.1:5599")
    assert default_endpoint() == "tcp://127.0.0.1:5599"


def test_default_endpoint_runtime_dir(monkeypatch):
    monkeypatch.delenv("WATTSPAN_ENDPOINT", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_endpoint() == "ipc:///run/user/1000/wattspan/spans.sock"


def test_default_endpoint_root_and_users(monkeypatch):
    monkeypatch.delenv("WATTSPAN_ENDPOINT", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(protocol.os, "getuid", lambda: 0)
    assert default_endpoint() == "ipc:///run/wattspan/spans.sock"
    monkeypatch.setattr(protocol.os, "getuid", lambda: 1234)
    assert default_endpoint() == "ipc:///tmp/wattspan-1234/wattspan/spans.sock"
    monkeypatch.setenv("WATTSPAN_ENDPOINT", "")
    assert default_endpoint() == "ipc:///tmp/wattspan-1234/wattspan/spans.sock"
    assert default_endpoint().startswith(protocol.SCHEMES)
