"""The wire format between applications (``wattspan.span``) and the agent.

Applications PUSH span events to the agent over ZeroMQ; the agent PULLs and calls
:func:`decode_frame` on each frame it receives. Two message kinds exist: :class:`Begin` and
:class:`End`.

Transport
---------
* Endpoint: :func:`default_endpoint` (``WATTSPAN_ENDPOINT``, else an ``ipc://`` socket in the
  user's runtime directory). Accepted schemes are ``ipc://`` and ``tcp://``; checking that a
  ``tcp://`` endpoint is a loopback address is the agent's job.
* Batching: one ZeroMQ frame carries ONE OR MORE messages back to back, with nothing between
  them (each message's length follows from its header). The client batches what its
  process produced within a few milliseconds into one frame of at most
  :data:`MAX_FRAME_BYTES`, oldest first. The agent must decode frames with
  :func:`decode_frame` (a list of messages, in order); :func:`decode` decodes exactly one
  message and rejects a frame holding several ("trailing bytes"). Frames are single-part:
  an agent using ``recv_multipart`` should decode every part with :func:`decode_frame`. The
  agent may set ``zmq.MAXMSGSIZE`` to :data:`MAX_FRAME_BYTES` on its PULL socket.
* Ordering: the events of one process arrive in the order they were produced (one PUSH
  socket per process); events of different processes may interleave in any order, and
  ``t_ns`` (CLOCK_MONOTONIC, shared by the host's processes) orders them.

Layout (version 1, all integers little-endian)
----------------------------------------------
Every message starts with the same 32-byte header::

    offset size  field
    0      1     version   u8   = 1
    1      1     kind      u8   1 = BEGIN, 2 = END
    2      2     flags     u16  END: bit 0 = the weight field is set; BEGIN: 0. Other bits: 0
    4      8     span_id   u64  unique within the pid
    12     8     t_ns      i64  CLOCK_MONOTONIC ns (time.monotonic_ns()), > 0
    20     4     pid       i32  > 0
    24     8     weight    f64  finite, >= 0 (END without the weight flag: 0.0)

BEGIN continues with three u16 lengths and then the bytes they measure::

    32     2     name_len      1..1024 (UTF-8 of 1..256 characters)
    34     2     request_len   0 = no request id, else UTF-8 of 1..256 characters
    36     2     extras_len    0 = no extras, else a compact JSON object (see below)
    38     ...   name | request_id | extras

END continues with one u16 length and the bytes::

    32     2     name_len      0 = keep the BEGIN name, else the final name (1..256 chars)
    34     ...   name

The extras JSON object holds the rarely used fields, each optional, so the common span
(name, request id, weight) involves no JSON at all::

    "devices":              list of up to 64 items: strings (1..128 chars) or ints (CUDA
                            indices as the process sees them, 0 <= i < 2**31)
    "attributes":           object of up to 32 entries, key 1..128 chars, value a string
                            (<= 1024 chars), bool, int (signed 64-bit) or finite float
    "trace_id":             OpenTelemetry trace id, 32 lowercase hex digits (not all zero)
    "otel_span_id":         OpenTelemetry span id, 16 lowercase hex digits (not all zero);
                            present exactly when trace_id is
    "cuda_visible_devices": the process's CUDA_VISIBLE_DEVICES (<= 4096 chars; "" is
                            meaningful: no GPU visible)

Unknown keys, unknown flag bits, trailing bytes and messages over :data:`MAX_MESSAGE_BYTES`
are errors. :func:`decode` and :func:`decode_frame` raise :class:`ProtocolError` (a
``ValueError``) with a short reason for every malformed input and never any other exception;
:func:`decode_frame` is all or nothing (one bad message rejects the frame).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "BEGIN",
    "END",
    "MAX_ATTRIBUTES",
    "MAX_DEVICES",
    "MAX_FRAME_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_REQUEST_ID_CHARS",
    "SCHEMES",
    "VERSION",
    "Begin",
    "End",
    "Message",
    "ProtocolError",
    "decode",
    "decode_frame",
    "default_endpoint",
    "encode",
]

VERSION = 1
BEGIN = 1
END = 2

#: END flag: the weight field carries the span's final weight.
FLAG_WEIGHT = 0x0001

MAX_MESSAGE_BYTES = 64 * 1024
#: A frame of several messages back to back (see "Batching").
MAX_FRAME_BYTES = 1024 * 1024
MAX_NAME_CHARS = 256
MAX_REQUEST_ID_CHARS = 256
MAX_DEVICES = 64
MAX_DEVICE_CHARS = 128
MAX_DEVICE_INDEX = 2**31 - 1
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY_CHARS = 128
MAX_ATTRIBUTE_VALUE_CHARS = 1024
MAX_CUDA_VISIBLE_CHARS = 4096
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_PID_MAX = 2**31 - 1

#: Endpoint schemes the client and agent accept.
SCHEMES = ("ipc://", "tcp://")

HEADER = struct.Struct("<BBHQqid")  # version, kind, flags, span_id, t_ns, pid, weight
BEGIN_STRUCT = struct.Struct("<BBHQqidHHH")  # header + name_len, request_len, extras_len
END_STRUCT = struct.Struct("<BBHQqidH")  # header + name_len
assert HEADER.size == 32 and BEGIN_STRUCT.size == 38 and END_STRUCT.size == 34
_BEGIN_SIZE = BEGIN_STRUCT.size
_END_SIZE = END_STRUCT.size
_unpack_begin = BEGIN_STRUCT.unpack_from
_unpack_end = END_STRUCT.unpack_from
_INF = math.inf

_EXTRA_KEYS = frozenset(
    ("devices", "attributes", "trace_id", "otel_span_id", "cuda_visible_devices")
)
_HEX = frozenset("0123456789abcdef")


class ProtocolError(ValueError):
    """A frame that is not a valid message; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Begin:
    """A span began in process ``pid`` at ``t_ns`` (CLOCK_MONOTONIC ns)."""

    pid: int
    span_id: int
    t_ns: int
    name: str
    request_id: str | None = None
    weight: float = 1.0
    #: As the application gave them: wattspan device ids, GPU UUIDs, or ints (CUDA indices
    #: in the process's numbering, see ``cuda_visible_devices``). Empty: the default set.
    devices: tuple[str | int, ...] = ()
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict, hash=False)
    trace_id: str | None = None
    otel_span_id: str | None = None
    #: The process's CUDA_VISIBLE_DEVICES, or None when it is not set.
    cuda_visible_devices: str | None = None


@dataclass(frozen=True, slots=True)
class End:
    """Span ``span_id`` of ``pid`` ended at ``t_ns``."""

    pid: int
    span_id: int
    t_ns: int
    #: The final weight, or None when it did not change since BEGIN.
    weight: float | None = None
    #: The final name (e.g. a route template known only after routing), or None.
    name: str | None = None


Message = Begin | End


# ---------------------------------------------------------------------------------- decode


def decode(frame: bytes) -> Begin | End:
    """Decode and validate one message; :class:`ProtocolError` for anything malformed."""
    try:
        return _decode(frame)
    except ProtocolError:
        raise
    except Exception as err:  # a bug of ours must not become another exception type
        raise ProtocolError(f"malformed ({type(err).__name__})") from None


def decode_frame(frame: bytes) -> list[Begin | End]:
    """Decode a frame of one or more messages back to back (what the client sends), in
    order; :class:`ProtocolError` if the frame or any message in it is malformed."""
    try:
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise ProtocolError("not bytes")
        frame = bytes(frame)
        n = len(frame)
        if n > MAX_FRAME_BYTES:
            raise ProtocolError("frame oversized")
        if n == 0:
            raise ProtocolError("empty frame")
        out = []
        pos = 0
        while pos < n:
            try:
                message, end = _decode_at(frame, pos, n)
            except ProtocolError as err:
                if not out and pos + _message_size(frame, pos) >= n:
                    raise
                raise ProtocolError(f"message {len(out)}: {err.reason}") from None
            out.append(message)
            pos = end
        return out
    except ProtocolError:
        raise
    except Exception as err:
        raise ProtocolError(f"malformed ({type(err).__name__})") from None


def _message_size(frame: bytes, pos: int) -> int:
    """The length of the message at ``pos``, from its header (capped at the frame's end)."""
    n = len(frame)
    if n - pos < 2:
        return n - pos
    kind = frame[pos + 1]
    if kind == BEGIN and n - pos >= BEGIN_STRUCT.size:
        name_len, rid_len, extras_len = struct.unpack_from("<HHH", frame, pos + 32)
        size = BEGIN_STRUCT.size + name_len + rid_len + extras_len
    elif kind == END and n - pos >= END_STRUCT.size:
        (name_len,) = struct.unpack_from("<H", frame, pos + 32)
        size = END_STRUCT.size + name_len
    else:
        return n - pos  # let _decode say what is wrong
    return min(size, n - pos)


def _decode(frame) -> Begin | End:
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolError("not bytes")
    frame = bytes(frame)
    n = len(frame)
    if n > MAX_MESSAGE_BYTES:
        raise ProtocolError("oversized")
    message, end = _decode_at(frame, 0, n)
    if end < n:
        raise ProtocolError("trailing bytes")
    return message


def _decode_at(frame: bytes, pos: int, limit: int) -> tuple[Begin | End, int]:
    """The message at ``pos`` (read in place: frames are decoded without copying each
    message out) and where the next one starts."""
    if limit - pos < 1:
        raise ProtocolError("truncated")
    if frame[pos] != VERSION:
        raise ProtocolError(f"wrong version {frame[pos]}")
    if limit - pos < 2:
        raise ProtocolError("truncated")
    kind = frame[pos + 1]
    if kind == BEGIN:
        if limit - pos < _BEGIN_SIZE:
            raise ProtocolError("truncated")
        (_, _, flags, span_id, t_ns, pid, weight, name_len, rid_len, extras_len) = (
            _unpack_begin(frame, pos)
        )
        if flags:
            raise ProtocolError("unknown flags")
        if t_ns <= 0:
            raise ProtocolError("t_ns not positive")
        if pid <= 0:
            raise ProtocolError("pid not positive")
        if not 0.0 <= weight < _INF:  # also false for NaN
            raise ProtocolError("weight negative" if weight < 0 else "weight not finite")
        start = pos + _BEGIN_SIZE
        end = start + name_len + rid_len + extras_len
        if end > limit:
            raise ProtocolError("truncated")
        if end - pos > MAX_MESSAGE_BYTES:
            raise ProtocolError("oversized")
        name = _check_name(_text(frame[start : start + name_len], "name"))
        start += name_len
        request_id = None
        if rid_len:
            request_id = _text(frame[start : start + rid_len], "request_id")
            if len(request_id) > MAX_REQUEST_ID_CHARS:
                raise ProtocolError("request_id too long")
        start += rid_len
        if extras_len:
            extras = _extras(frame[start:end])
            return Begin(pid=pid, span_id=span_id, t_ns=t_ns, name=name,
                         request_id=request_id, weight=weight, **extras), end
        return Begin(pid, span_id, t_ns, name, request_id, weight), end
    if kind == END:
        if limit - pos < _END_SIZE:
            raise ProtocolError("truncated")
        _, _, flags, span_id, t_ns, pid, weight, name_len = _unpack_end(frame, pos)
        if flags & ~FLAG_WEIGHT:
            raise ProtocolError("unknown flags")
        if t_ns <= 0:
            raise ProtocolError("t_ns not positive")
        if pid <= 0:
            raise ProtocolError("pid not positive")
        if flags & FLAG_WEIGHT:
            if not 0.0 <= weight < _INF:
                raise ProtocolError("weight negative" if weight < 0 else "weight not finite")
        elif weight != 0.0 or math.copysign(1.0, weight) < 0:
            raise ProtocolError("weight set without flag")
        else:
            weight = None
        end = pos + _END_SIZE + name_len
        if end > limit:
            raise ProtocolError("truncated")
        name = None
        if name_len:
            name = _check_name(_text(frame[pos + _END_SIZE : end], "name"))
        return End(pid, span_id, t_ns, weight, name), end
    raise ProtocolError(f"unknown kind {kind}")


def _check_common(t_ns: int, pid: int) -> None:
    if t_ns <= 0:
        raise ProtocolError("t_ns not positive")
    if pid <= 0:
        raise ProtocolError("pid not positive")


def _check_weight(weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ProtocolError("weight not a number")
    if not math.isfinite(weight):
        raise ProtocolError("weight not finite")
    if weight < 0:
        raise ProtocolError("weight negative")
    return float(weight)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"bad UTF-8 in {what}") from None


def _check_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise ProtocolError("empty name")
    if len(name) > MAX_NAME_CHARS:
        raise ProtocolError("name too long")
    return name


def _extras(raw: bytes) -> dict:
    """The validated extras; identical blobs (a process sends the same CUDA_VISIBLE_DEVICES
    and devices with every span) are parsed once. Callers must not mutate the result."""
    cached = _extras_cache.get(raw)
    if cached is not None:
        return cached
    out = _parse_extras(raw)
    if "trace_id" not in out:  # trace ids differ per span: not worth keeping
        if len(_extras_cache) >= _EXTRAS_CACHE_SIZE:
            _extras_cache.clear()
        _extras_cache[raw] = out
    return out


_extras_cache: dict[bytes, dict] = {}
_EXTRAS_CACHE_SIZE = 1024


def _parse_extras(raw: bytes) -> dict:
    text = _text(raw, "extras")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad extras JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("extras not an object")
    unknown = obj.keys() - _EXTRA_KEYS
    if unknown:
        raise ProtocolError(f"unknown extra {sorted(unknown)[0][:32]!r}")
    out: dict = {}
    if "devices" in obj:
        out["devices"] = _check_devices(obj["devices"])
    if "attributes" in obj:
        out["attributes"] = _check_attributes(obj["attributes"])
    if ("trace_id" in obj) != ("otel_span_id" in obj):
        raise ProtocolError("trace_id without otel_span_id")
    if "trace_id" in obj:
        out["trace_id"] = _check_hex(obj["trace_id"], 32, "trace_id")
        out["otel_span_id"] = _check_hex(obj["otel_span_id"], 16, "otel_span_id")
    if "cuda_visible_devices" in obj:
        cvd = obj["cuda_visible_devices"]
        if not isinstance(cvd, str) or len(cvd) > MAX_CUDA_VISIBLE_CHARS:
            raise ProtocolError("bad cuda_visible_devices")
        out["cuda_visible_devices"] = cvd
    return out


def _check_devices(devices) -> tuple:
    if not isinstance(devices, list | tuple):
        raise ProtocolError("devices not a list")
    if len(devices) > MAX_DEVICES:
        raise ProtocolError("too many devices")
    for d in devices:
        if isinstance(d, str):
            if not d:
                raise ProtocolError("empty device")
            if len(d) > MAX_DEVICE_CHARS:
                raise ProtocolError("device too long")
        elif isinstance(d, int) and not isinstance(d, bool):
            if not 0 <= d <= MAX_DEVICE_INDEX:
                raise ProtocolError("device index out of range")
        else:
            raise ProtocolError("device not a string or int")
    return tuple(devices)


def _check_attributes(attributes) -> dict:
    if not isinstance(attributes, Mapping):
        raise ProtocolError("attributes not an object")
    if len(attributes) > MAX_ATTRIBUTES:
        raise ProtocolError("too many attributes")
    out = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key or len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            raise ProtocolError("bad attribute key")
        if isinstance(value, str):
            if len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
                raise ProtocolError("attribute value too long")
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ProtocolError("attribute int out of range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ProtocolError("attribute float not finite")
        else:
            raise ProtocolError("attribute value not a scalar")
        out[key] = value
    return out


def _check_hex(value, digits: int, what: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) != digits
        or not _HEX.issuperset(value)
        or value == "0" * digits
    ):
        raise ProtocolError(f"bad {what}")
    return value


# ---------------------------------------------------------------------------------- encode


def encode(message: Begin | End) -> bytes:
    """Encode a message, validating it as :func:`decode` would (ProtocolError)."""
    try:
        return _encode(message)
    except ProtocolError:
        raise
    except Exception as err:
        raise ProtocolError(f"cannot encode ({type(err).__name__})") from None


def _encode(message: Begin | End) -> bytes:
    if isinstance(message, Begin):
        _check_header_fields(message)
        _check_weight(message.weight)
        name = _check_name(message.name)
        rid = message.request_id
        if rid is not None:
            if not isinstance(rid, str) or not rid:
                raise ProtocolError("empty request_id")
            if len(rid) > MAX_REQUEST_ID_CHARS:
                raise ProtocolError("request_id too long")
        extras: dict = {}
        if message.devices:
            extras["devices"] = list(_check_devices(message.devices))
        if message.attributes:
            extras["attributes"] = _check_attributes(message.attributes)
        if (message.trace_id is None) != (message.otel_span_id is None):
            raise ProtocolError("trace_id without otel_span_id")
        if message.trace_id is not None:
            extras["trace_id"] = _check_hex(message.trace_id, 32, "trace_id")
            extras["otel_span_id"] = _check_hex(message.otel_span_id, 16, "otel_span_id")
        if message.cuda_visible_devices is not None:
            cvd = message.cuda_visible_devices
            if not isinstance(cvd, str) or len(cvd) > MAX_CUDA_VISIBLE_CHARS:
                raise ProtocolError("bad cuda_visible_devices")
            extras["cuda_visible_devices"] = cvd
        blob = encode_extras(extras) if extras else b""
        if len(blob) > MAX_MESSAGE_BYTES:
            raise ProtocolError("oversized")
        frame = pack_begin(message.pid, message.span_id, message.t_ns, _utf8(name),
                           _utf8(rid) if rid else b"", float(message.weight), blob)
    elif isinstance(message, End):
        _check_header_fields(message)
        weight = message.weight
        if weight is not None:
            weight = _check_weight(weight)
        name = message.name
        if name is not None:
            name = _check_name(name)
        frame = pack_end(message.pid, message.span_id, message.t_ns, weight,
                         _utf8(name) if name else b"")
    else:
        raise ProtocolError("not a message")
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError("oversized")
    return frame


def _check_header_fields(message) -> None:
    for attr, lo, hi in (("pid", 1, _PID_MAX), ("span_id", 0, 2**64 - 1),
                         ("t_ns", 1, _INT64_MAX)):
        value = getattr(message, attr)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"{attr} not an int")
        if not lo <= value <= hi:
            raise ProtocolError(f"{attr} out of range")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("text not encodable as UTF-8") from None


def encode_extras(extras: dict) -> bytes:
    """The compact JSON of an extras object (already validated)."""
    return json.dumps(extras, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


# Fast paths for the client, which has sanitized its inputs already (no validation here).
_pack_begin = BEGIN_STRUCT.pack
_pack_end = END_STRUCT.pack


def pack_begin(pid: int, span_id: int, t_ns: int, name: bytes, request_id: bytes,
               weight: float, extras: bytes) -> bytes:
    """BEGIN from pre-encoded parts (no validation: see :func:`encode` for that)."""
    return _pack_begin(VERSION, BEGIN, 0, span_id, t_ns, pid, weight, len(name),
                       len(request_id), len(extras)) + name + request_id + extras


def pack_end(pid: int, span_id: int, t_ns: int, weight: float | None, name: bytes) -> bytes:
    """END from pre-encoded parts; ``weight`` None and ``name`` b"" mean unchanged."""
    if weight is None:
        return _pack_end(VERSION, END, 0, span_id, t_ns, pid, 0.0, len(name)) + name
    return _pack_end(VERSION, END, FLAG_WEIGHT, span_id, t_ns, pid, weight, len(name)) + name


# -------------------------------------------------------------------------------- endpoint


def runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR``, else ``/run`` for root, else ``/tmp/wattspan-<uid>``."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return xdg
    uid = os.getuid() if hasattr(os, "getuid") else 0
    if uid == 0:
        return "/run"
    return f"/tmp/wattspan-{uid}"


def default_endpoint() -> str:
    """``WATTSPAN_ENDPOINT`` if set, else ``ipc://<runtime dir>/wattspan/spans.sock``.

    The agent binds this endpoint (creating the ``wattspan`` directory); applications connect.
    """
    endpoint = os.environ.get("WATTSPAN_ENDPOINT")
    if endpoint:
        return endpoint
    return f"ipc://{runtime_dir()}/wattspan/spans.sock"
