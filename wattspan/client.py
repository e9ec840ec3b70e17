"""``wattspan.span``: mark a request or step so the agent can attribute energy to it.

Each span produces two small messages (``wattspan.protocol``): BEGIN when it starts and END
when it ends. They reach the agent over a ZeroMQ PUSH socket (``protocol.default_endpoint()``,
non-blocking sends, bounded high-water mark, ``LINGER`` 0, ``IMMEDIATE`` so nothing queues for
an agent that is not there).

How events travel (the cost budget): the application's thread only encodes the event and
appends it to a bounded in-process queue (a ``collections.deque``: no lock, no syscall, no
GIL release). A small daemon thread per process, the *sender*, wakes every
:data:`FLUSH_INTERVAL_S` while there is traffic, and sends what is queued as frames of several
messages back to back (``protocol.decode_frame`` splits them); it parks when the process is
idle and the next event wakes it. The agent learns of an event within a few milliseconds
(well under 100 ms). One span costs the application a fraction of an OpenTelemetry SDK span
(``benchmarks/bench_client.py``).

The application is never blocked and never raised into:

* an absent agent, a full queue, a bad endpoint, a closed socket or a bug of ours drops the
  events, counts them (:func:`client_stats`) and logs ONE warning per process;
* for :data:`CONNECT_GRACE_MS` after the socket is opened (the first event of a process),
  events the socket refuses because the connection is still being set up are kept and retried;
* a span whose BEGIN could not be queued (queue full) queues no END (counted as dropped).

Fork safety: a child made with ``os.fork`` (gunicorn, multiprocessing "fork") starts with an
empty queue, no sender thread and no socket; its first event opens its own context and socket
and starts its own sender. An ``os.register_at_fork`` hook resets this state, the socket
remembers the pid that opened it and is never used by another pid, and the parent's ZeroMQ
objects are kept (never used, closed or garbage collected) in the child. At exit the queue is
flushed (for at most :data:`EXIT_LINGER_MS`).

CUDA_VISIBLE_DEVICES: when the variable is set, every BEGIN carries it (read once per process,
at the first span, and again after a fork), so the agent can map integer ``devices`` (CUDA
indices as the process sees them) and the default selection ("the GPUs visible to the
process") onto physical GPUs. When it is not set, nothing is sent (all GPUs are visible).

OpenTelemetry: if an OpenTelemetry span is current when a wattspan span begins, its trace id
and span id travel in BEGIN. OpenTelemetry is never imported by this module: if the
application has not imported ``opentelemetry.trace``, no OTel span can be current.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import itertools
import json
import logging
import math
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any

from wattspan import protocol
from wattspan.protocol import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
    MAX_CUDA_VISIBLE_CHARS,
    MAX_DEVICE_CHARS,
    MAX_DEVICE_INDEX,
    MAX_DEVICES,
    MAX_MESSAGE_BYTES,
    MAX_NAME_CHARS,
    MAX_REQUEST_ID_CHARS,
)

# pyzmq is imported by the sender thread when it first opens the socket (not at
# ``import wattspan``); a broken install only disables sending.
zmq: Any = None

__all__ = ["ClientStats", "Span", "client_stats", "close", "configure", "flush", "span"]

log = logging.getLogger("wattspan")

#: Events waiting in the process's queue beyond which new spans are dropped (and counted).
QUEUE_MAX = 65_536
#: How often the sender thread sends what is queued while there is traffic.
FLUSH_INTERVAL_S = 0.002
#: The sender parks after this long without events (an event wakes it).
IDLE_PARK_S = 0.2
#: Frames ZeroMQ may hold for a slow agent (a frame is what was queued in one flush
#: interval: small, at most BATCH_MAX_BYTES), about 2 s of backlog at full speed.
SEND_HWM = 1000
BATCH_MAX_BYTES = 256 * 1024
#: For this long after the socket is opened, events refused because the connection is still
#: being set up (ZeroMQ takes about a millisecond) are retried; afterwards they are dropped.
CONNECT_GRACE_MS = 250
#: At exit (and in close()), how long queued events may take to reach the agent.
EXIT_LINGER_MS = 200

_INF = math.inf
_VERSION = protocol.VERSION
_BEGIN = protocol.BEGIN
_END = protocol.END
_FLAG_WEIGHT = protocol.FLAG_WEIGHT
_pack_begin = protocol.BEGIN_STRUCT.pack
_pack_end = protocol.END_STRUCT.pack
# Room for extras in a BEGIN: the name and the request id take at most 2 x 1024 bytes.
_MAX_EXTRAS_BYTES = (MAX_MESSAGE_BYTES - protocol.BEGIN_STRUCT.size
                     - 4 * (MAX_NAME_CHARS + MAX_REQUEST_ID_CHARS))


@dataclass(frozen=True)
class ClientStats:
    """Counts for this process since it started (or forked)."""

    #: Events (BEGIN or END) handed to ZeroMQ.
    sent: int
    #: Events not sent: no agent, full queue, bad endpoint, closed client, internal error.
    dropped: int
    #: Internal errors swallowed, and bad arguments repaired (e.g. a negative weight).
    errors: int
    #: Events queued, not sent yet.
    queued: int


# ------------------------------------------------------------------------- process state
# Everything below is per process; _after_fork_in_child() resets it in a forked child.

_lock = threading.Lock()  # the socket, the counters, the sender's start
_pid = os.getpid()
_queue: deque = deque()  # encoded events, appended by application threads
_parked = True  # no sender running, or it waits on _wake_event: the next event wakes it
_wake_event = threading.Event()
_sender_pid = 0  # the pid whose sender thread runs (0: none)
_sock = None  # the PUSH socket of this process, opened lazily by the sender
_sock_pid = 0  # the pid that opened _sock
_ctx = None
_grace_until_ns = 0
_retry: list = []  # (frame, n events) refused while connecting, sent first next time
_disabled_reason: str | None = None  # endpoint unusable: drop without trying
_closed = False  # close() or interpreter exit: drop
_endpoint_override: str | None = None
_endpoint_used: str | None = None
_sent = 0
_dropped = 0
_errors = 0
_warned = False
_ids = itertools.count(random.getrandbits(62) + 1)
_UNREAD = object()
_cvd: Any = _UNREAD  # CUDA_VISIBLE_DEVICES: _UNREAD, None or str
_cvd_extras = b""  # its pre-encoded extras blob
_orphans: list = []  # a parent's ZeroMQ objects, kept alive (never touched) in a child


def _after_fork_in_child() -> None:
    global _lock, _pid, _queue, _parked, _wake_event, _sender_pid, _sock, _sock_pid
    global _ctx, _retry, _sent, _dropped, _errors, _warned, _ids, _cvd, _cvd_extras, _closed
    if _sock is not None or _ctx is not None:
        _orphans.append((_sock, _ctx))  # the parent's: never close, term or collect them here
    _lock = threading.Lock()  # the parent's may have been held by another thread at fork
    _pid = os.getpid()
    _queue = deque()  # the parent's queued events are the parent's to send
    _wake_event = threading.Event()
    _parked = True
    _sender_pid = 0  # threads do not survive fork: the first event starts a new sender
    _sock = _ctx = None
    _sock_pid = 0
    _retry = []
    _sent = _dropped = _errors = 0
    _warned = False
    _closed = False
    _ids = itertools.count(random.getrandbits(62) + 1)
    _cvd = _UNREAD
    _cvd_extras = b""


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _claim_warning() -> bool:
    """True for the first problem of this process (call with _lock held)."""
    global _warned
    first = not _warned
    _warned = True
    return first


def _warn(first: bool, message: str, *args) -> None:
    """The process's one warning; later problems are only counted (and logged at DEBUG)."""
    try:
        if first:
            log.warning(message + " (further problems are only counted: "
                        "wattspan.client_stats())", *args)
        else:
            log.debug(message, *args)
    except Exception:
        pass


def _count_dropped(n: int = 1) -> None:
    global _dropped
    with _lock:
        _dropped += n


def _count_error(what: str, err: BaseException | None = None) -> None:
    global _errors
    try:
        with _lock:
            _errors += 1
            first = _claim_warning()
        _warn(first, "wattspan: internal error (%s): %r", what, err)
    except Exception:
        pass


# ------------------------------------------------------------------------------ sender


def _wake() -> None:
    """Called by the application after queueing an event while the sender is parked."""
    global _parked, _sender_pid, _dropped
    try:
        if _sender_pid == _pid:
            _wake_event.set()
            return
        warning = None
        with _lock:
            if _closed:  # after close() or at exit: nothing will send these
                n = len(_queue)
                _queue.clear()
                _dropped += n
                if n:
                    warning = _drop_warning("the client is closed")
            elif _sender_pid != _pid:
                thread = threading.Thread(target=_sender, args=(_pid,),
                                          name="wattspan-sender", daemon=True)
                _parked = False
                _sender_pid = _pid
                try:
                    thread.start()
                    _register_mp_exit()
                except Exception as err:  # e.g. at interpreter shutdown
                    _sender_pid = 0
                    _parked = True
                    n = len(_queue)
                    _queue.clear()
                    _dropped += n
                    warning = _drop_warning(f"cannot start the sender thread: {err!r}")
        if warning is not None:
            _warn(*warning)
    except Exception as err:
        _count_error("waking the sender", err)


def _register_mp_exit() -> None:
    """multiprocessing's children end with os._exit (no atexit): flush from its finalizers."""
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        try:
            mp_util.Finalize(None, _at_exit, exitpriority=-50)
        except Exception:
            pass


def _sender(pid: int) -> None:
    """The sender thread's loop: flush every FLUSH_INTERVAL_S while busy, park when idle."""
    global _parked, _sender_pid
    idle = 0
    event = _wake_event
    try:
        while not _closed and _pid == pid:
            if _queue or _retry:
                idle = 0
                with _lock:
                    warning = _flush_locked()
                if warning is not None:
                    _warn(*warning)
                time.sleep(FLUSH_INTERVAL_S)
                continue
            idle += 1
            if idle * FLUSH_INTERVAL_S < IDLE_PARK_S:
                time.sleep(FLUSH_INTERVAL_S)
                continue
            # Park. An application thread appends and then reads _parked; here _parked is
            # written and then the queue read again: one of the two sees the other.
            event.clear()
            _parked = True
            if _queue or _closed:
                _parked = False
                continue
            event.wait(1.0)
            _parked = False
            idle = 0
    except Exception as err:
        _count_error("sender thread", err)
    finally:
        with _lock:
            if _sender_pid == pid:
                _sender_pid = 0
                _parked = True
        if _queue and _pid == pid:  # queued while ending: drop them if closed, else restart
            _wake()


def _load_zmq() -> None:
    global zmq
    import zmq as module

    zmq = module


def _open():
    """This process's socket, opening it (under _lock); None when sends cannot work."""
    global _sock, _sock_pid, _ctx, _disabled_reason, _endpoint_used, _grace_until_ns
    if _sock is not None and _sock_pid == _pid:
        return _sock
    if _disabled_reason is not None or _closed:
        return None
    if _sock is not None:  # opened by another process (fork without the hook): leave it
        _orphans.append((_sock, _ctx))
        _sock = _ctx = None
    endpoint = _endpoint_override or protocol.default_endpoint()
    _endpoint_used = endpoint
    if zmq is None:
        try:
            _load_zmq()
        except Exception as err:
            _disabled_reason = f"pyzmq is not importable: {err!r}"
            return None
    if not endpoint.startswith(protocol.SCHEMES):
        _disabled_reason = f"unsupported endpoint {endpoint!r} (use ipc:// or tcp://)"
        return None
    ctx = sock = None
    try:
        ctx = zmq.Context(io_threads=1)
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.connect(endpoint)
    except Exception as err:
        _disabled_reason = f"cannot connect to {endpoint!r}: {err}"
        try:
            if sock is not None:
                sock.close(0)
            if ctx is not None:
                ctx.term()
        except Exception:
            pass
        return None
    _ctx, _sock, _sock_pid = ctx, sock, _pid
    _grace_until_ns = monotonic_ns() + int(CONNECT_GRACE_MS * 1_000_000)
    return sock


def _drop_warning(reason: str):
    first = _claim_warning()
    return (first, "wattspan: span events are being dropped: %s (endpoint %s)", reason,
            _endpoint_used)


def _batches(events: list) -> list:
    """[(frame, n events)]: events back to back, each frame <= BATCH_MAX_BYTES."""
    limit = BATCH_MAX_BYTES
    out = []
    start = size = 0
    for i, event in enumerate(events):
        if size + len(event) > limit and i > start:
            out.append((b"".join(events[start:i]), i - start))
            start, size = i, 0
        size += len(event)
    if start < len(events):
        out.append((b"".join(events[start:]), len(events) - start))
    return out


def _flush_locked():
    """Send what is queued (under _lock, so events leave in order); the warning to log."""
    global _sent, _dropped, _retry
    queue = _queue
    events = []
    pop = queue.popleft
    try:
        for _ in range(len(queue)):
            events.append(pop())
    except IndexError:  # emptied by another flusher: cannot happen under _lock, but be safe
        pass
    batches = _retry + _batches(events) if events else _retry
    _retry = []
    if not batches:
        return None
    sock = _open()
    if sock is None:
        _dropped += sum(n for _, n in batches)
        return _drop_warning(_disabled_reason or "the client is closed")
    for i, (frame, n) in enumerate(batches):
        try:
            sock.send(frame, zmq.NOBLOCK)
        except Exception as err:
            rest = batches[i:]
            if zmq is not None and isinstance(err, zmq.Again):
                if monotonic_ns() < _grace_until_ns:
                    _retry = rest  # still connecting: try again next round
                    return None
                reason = "no agent connected, or its queue is full"
            else:
                reason = f"send failed: {err!r}"
            _dropped += sum(n for _, n in rest)
            return _drop_warning(reason)
        _sent += n
    return None


def _cuda_visible_extras() -> bytes:
    """The extras blob carrying CUDA_VISIBLE_DEVICES (b"" when unset); read once per process."""
    global _cvd, _cvd_extras
    if _cvd is _UNREAD:
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
        if cvd is not None and len(cvd) > MAX_CUDA_VISIBLE_CHARS:
            cvd = None
        _cvd_extras = (protocol.encode_extras({"cuda_visible_devices": cvd})
                       if cvd is not None else b"")
        _cvd = cvd
    return _cvd_extras


# OpenTelemetry: 0 = opentelemetry.trace not imported (yet), 1 = read OTel's context variable
# directly (its default ContextVarsRuntimeContext), 2 = through the public API.
_otel_mode = 0
_otel_var: Any = None
_otel_key: Any = None
_otel_get_current_span: Callable | None = None


def _otel_resolve() -> None:
    global _otel_mode, _otel_var, _otel_key, _otel_get_current_span
    try:
        trace = sys.modules["opentelemetry.trace"]
        _otel_get_current_span = trace.get_current_span
        try:
            from contextvars import ContextVar

            from opentelemetry import context as otel_context
            from opentelemetry.trace import propagation

            var = getattr(otel_context._RUNTIME_CONTEXT, "_current_context", None)
            key = propagation._SPAN_KEY
            if isinstance(var, ContextVar) and isinstance(key, str):
                _otel_var, _otel_key, _otel_mode = var, key, 1
                return
        except Exception:
            pass
        _otel_mode = 2
    except Exception:
        _otel_mode = 0


def _otel_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current OpenTelemetry span, if it is valid."""
    try:
        if _otel_mode == 1:
            current = _otel_var.get().get(_otel_key)
            if current is None:
                return None
        else:
            current = _otel_get_current_span()
        ctx = current.get_span_context()
        if ctx.is_valid:
            return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    except Exception:
        pass
    return None


# -------------------------------------------------------------------------- sanitizing
# The application's arguments are repaired, never rejected: wattspan must not raise.


def _fix_name(name) -> str:
    if not isinstance(name, str):
        name = getattr(name, "__qualname__", None) or str(name)
    if not name:
        return "unnamed"
    return name[:MAX_NAME_CHARS]


def _fix_request_id(request_id) -> str | None:
    if request_id is None:
        return None
    if not isinstance(request_id, str):
        request_id = str(request_id)
    return request_id[:MAX_REQUEST_ID_CHARS] or None


def _valid_weight(weight) -> float | None:
    """The weight as a float, or None when it is not a finite number >= 0."""
    if isinstance(weight, bool):
        return None
    try:
        w = float(weight)
    except Exception:
        return None
    if 0.0 <= w < _INF:
        return w
    return None


def _fix_weight(weight) -> float:
    w = _valid_weight(weight)
    if w is None:
        _count_error("span weight must be a finite number >= 0", None)
        return 1.0
    return w


def _fix_devices(devices) -> list:
    if isinstance(devices, str | int):
        devices = (devices,)
    out = []
    for d in devices:
        if isinstance(d, bool):
            continue
        if isinstance(d, int):
            if 0 <= d <= MAX_DEVICE_INDEX:
                out.append(d)
            continue
        if not isinstance(d, str):
            d = str(d)
        if d:
            out.append(d[:MAX_DEVICE_CHARS])
        if len(out) >= MAX_DEVICES:
            break
    return out[:MAX_DEVICES]


def _fix_attributes(attributes: Mapping) -> dict:
    out = {}
    for key, value in attributes.items():
        if len(out) >= MAX_ATTRIBUTES:
            break
        key = str(key)[:MAX_ATTRIBUTE_KEY_CHARS]
        if not key:
            continue
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                value = str(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                value = str(value)
        elif not isinstance(value, str):
            value = str(value)
        if isinstance(value, str):
            value = value[:MAX_ATTRIBUTE_VALUE_CHARS]
        out[key] = value
    return out


def _extras(devices, attributes, otel) -> bytes:
    extras: dict = {}
    if devices:
        extras["devices"] = _fix_devices(devices)
    if attributes:
        extras["attributes"] = _fix_attributes(attributes)
    if otel is not None:
        extras["trace_id"], extras["otel_span_id"] = otel
    _cuda_visible_extras()
    if _cvd is not None:
        extras["cuda_visible_devices"] = _cvd
    if not extras:
        return b""
    try:
        return protocol.encode_extras(extras)
    except UnicodeEncodeError:  # lone surrogates: escape them
        return json.dumps(extras, separators=(",", ":")).encode("ascii")


# ------------------------------------------------------------------------------- spans


class Span:
    """A span for the agent: ``wattspan.span(name, *, request_id=None, weight=1.0,
    devices=None, attributes=None)``.

    Use it as a context manager (``with`` / ``async with``) or as a decorator of sync, async
    and generator functions (a new span per call)::

        with wattspan.span("generate", request_id=rid) as s:
            tokens = model.generate(...)
            s.weight = len(tokens)          # the final weight travels in END

    ``name``: what is being done (1..256 characters; e.g. "generate"). ``request_id``: an id
    to find this span's record by (<= 256 characters; never a metric dimension). ``weight``:
    this span's share of the devices' power relative to concurrent spans (default 1; set
    ``s.weight`` or call ``s.set_weight()`` before the end, e.g. to the tokens generated).
    ``devices``: wattspan device ids (``gpu:<uuid>``, ``cpu:0``, ``neuron:0``), GPU UUIDs, or
    ints (CUDA indices as this process sees them); None: the agent's default selection.
    ``attributes``: up to 32 str -> str/int/float/bool entries, sent in BEGIN.

    While the span is open the application may set ``weight`` and ``name`` (e.g. the route
    template known only after routing); both are sent in END when they changed.
    ``span_id`` is the id of the current (or last) use, None before the first.
    A Span may be entered again after it ended (a new span id each time), not while open.

    Bad arguments are repaired (and counted in ``client_stats().errors``), never raised.
    """

    __slots__ = ("name", "request_id", "weight", "devices", "attributes", "span_id",
                 "_name0", "_weight0", "_open")

    def __init__(self, name: str, *, request_id: str | None = None, weight: float = 1.0,
                 devices: Iterable[str | int] | None = None,
                 attributes: Mapping[str, str | int | float | bool] | None = None):
        self.name = name
        self.request_id = request_id
        self.weight = weight
        self.devices = devices
        self.attributes = attributes
        self.span_id: int | None = None
        self._open = False

    # -- context manager ---------------------------------------------------------------

    def __enter__(self) -> Span:
        try:
            span_id = self.span_id = next(_ids)
            name = self.name
            if name.__class__ is not str or not 0 < len(name) <= MAX_NAME_CHARS:
                name = self.name = _fix_name(name)
            self._name0 = name
            weight = self.weight
            if weight.__class__ is not float or not 0.0 <= weight < _INF:
                weight = self.weight = _fix_weight(weight)
            self._weight0 = weight
            rid = self.request_id
            if rid is None:
                rid_b = b""
            else:
                if rid.__class__ is not str or not 0 < len(rid) <= MAX_REQUEST_ID_CHARS:
                    rid = self.request_id = _fix_request_id(rid)
                rid_b = rid.encode("utf-8", "replace") if rid else b""
            if _otel_mode:
                otel = _otel_ids()
            elif "opentelemetry.trace" in sys.modules:
                _otel_resolve()
                otel = _otel_ids()
            else:
                otel = None
            name_b = name.encode("utf-8", "replace")
            if self.devices or self.attributes or otel is not None:
                extras = _extras(self.devices, self.attributes, otel)
                if len(extras) > _MAX_EXTRAS_BYTES:  # oversized attributes: leave them out
                    _count_error("span attributes too large, not sent", None)
                    extras = _extras(self.devices, None, otel)
            elif _cvd is _UNREAD:
                extras = _cuda_visible_extras()
            else:
                extras = _cvd_extras
            queue = _queue
            if len(queue) < QUEUE_MAX:
                queue.append(_pack_begin(_VERSION, _BEGIN, 0, span_id, monotonic_ns(), _pid,
                                         weight, len(name_b), len(rid_b), len(extras))
                             + name_b + rid_b + extras)
                self._open = True
                if _parked:
                    _wake()
            else:
                self._open = False
                _queue_full()
        except Exception as err:
            self._open = False
            _count_error("span begin", err)
            _count_dropped()
        return self

    def __exit__(self, exc_type=None, exc=None, tb=None) -> bool:
        if self._open:
            self._open = False
            try:
                t_ns = monotonic_ns()
                weight = self.weight
                if weight is self._weight0 or weight == self._weight0:
                    flags, weight = 0, 0.0
                elif weight.__class__ is float and 0.0 <= weight < _INF:
                    flags = _FLAG_WEIGHT
                else:
                    weight = _valid_weight(weight)
                    if weight is None:
                        _count_error("span weight must be a finite number >= 0", None)
                        flags, weight = 0, 0.0
                    elif weight == self._weight0:
                        flags, weight = 0, 0.0
                    else:
                        flags = _FLAG_WEIGHT
                name = self.name
                if name is self._name0 or name == self._name0:
                    frame = _pack_end(_VERSION, _END, flags, self.span_id, t_ns, _pid, weight, 0)
                else:
                    name_b = _fix_name(name).encode("utf-8", "replace")
                    frame = _pack_end(_VERSION, _END, flags, self.span_id, t_ns, _pid, weight,
                                      len(name_b)) + name_b
                queue = _queue
                if len(queue) < QUEUE_MAX:
                    queue.append(frame)
                    if _parked:
                        _wake()
                else:
                    _queue_full()
            except Exception as err:
                _count_error("span end", err)
                _count_dropped()
        elif self.span_id is not None:
            _count_dropped()  # its BEGIN was dropped: the END is dropped with it
        return False

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, exc_type=None, exc=None, tb=None) -> bool:
        return self.__exit__(exc_type, exc, tb)

    # -- convenience -------------------------------------------------------------------

    def set_weight(self, weight: float) -> None:
        """Set the span's final weight (e.g. tokens generated); sent in END."""
        self.weight = weight

    def set_name(self, name: str) -> None:
        """Set the span's final name (e.g. the route template); sent in END."""
        self.name = name

    @property
    def is_recording(self) -> bool:
        """Whether this open span's BEGIN was queued for the agent (its END will be)."""
        return self._open

    def __repr__(self) -> str:
        return (f"Span(name={self.name!r}, request_id={self.request_id!r}, "
                f"weight={self.weight!r}, span_id={self.span_id!r})")

    # -- decorator ---------------------------------------------------------------------

    def _fresh(self) -> Span:
        return Span(self.name, request_id=self.request_id, weight=self.weight,
                    devices=self.devices, attributes=self.attributes)

    def __call__(self, func: Callable) -> Callable:
        """Decorate ``func``: a new span per call (sync, async, generator functions)."""
        fresh = self._fresh
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args, **kwargs):
                with fresh():
                    return await func(*args, **kwargs)

            return async_wrapper
        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            async def asyncgen_wrapper(*args, **kwargs):
                with fresh():
                    async for item in func(*args, **kwargs):
                        yield item

            return asyncgen_wrapper
        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def gen_wrapper(*args, **kwargs):
                with fresh():
                    return (yield from func(*args, **kwargs))

            return gen_wrapper

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with fresh():
                return func(*args, **kwargs)

        return wrapper


#: ``wattspan.span(...)`` (the class itself: no extra call on the hot path).
span = Span


def _queue_full() -> None:
    global _dropped
    with _lock:
        _dropped += 1
        warning = _drop_warning(f"more than {QUEUE_MAX} events queued (the sender is behind)")
    _warn(*warning)


# ------------------------------------------------------------------------- management


def client_stats() -> ClientStats:
    """Events sent, dropped and queued (and internal errors) by this process."""
    with _lock:
        return ClientStats(sent=_sent, dropped=_dropped, errors=_errors,
                           queued=len(_queue) + sum(n for _, n in _retry))


def flush(timeout_s: float = 1.0) -> bool:
    """Send what is queued now, from the calling thread (this one may block up to
    ``timeout_s``, waiting for the connection). True when nothing is left queued."""
    deadline = monotonic_ns() + int(timeout_s * 1e9)
    while True:
        with _lock:
            warning = _flush_locked()
            left = bool(_queue or _retry)
            sock = _sock if _sock_pid == _pid else None
        if warning is not None:
            _warn(*warning)
        remaining_ms = (deadline - monotonic_ns()) // 1_000_000
        if not left or remaining_ms <= 0:
            return not left
        if _retry and sock is not None:
            with _lock:  # wait for the connection, in short slices (the lock is held)
                try:
                    sock.poll(min(remaining_ms, 10), zmq.POLLOUT)
                except Exception:
                    pass
        else:
            time.sleep(0.001)


def configure(endpoint: str | None = None) -> None:
    """Use ``endpoint`` from now on (None: ``protocol.default_endpoint()``, read again).

    Events still queued are dropped (counted) and this process's socket is closed; the next
    event opens a new one. Also re-enables a client that was closed or had a bad endpoint,
    and lets the next problem warn again.
    """
    global _endpoint_override, _disabled_reason, _closed, _warned, _dropped, _retry
    with _lock:
        n = len(_queue) + sum(n for _, n in _retry)
        _queue.clear()
        _retry = []
        _dropped += n
        _close_locked(linger_ms=0)
        _endpoint_override = endpoint
        _disabled_reason = None
        _closed = False
        _warned = False


def close(linger_ms: int = 0) -> None:
    """Send what is queued (for at most ``linger_ms``), close this process's socket and
    stop its sender; later events are dropped (counted) until :func:`configure`."""
    global _closed
    if linger_ms:
        flush(linger_ms / 1000)
    with _lock:
        _closed = True
        _close_locked(linger_ms)
    _wake_event.set()  # the sender sees _closed and ends


def _close_locked(linger_ms: int) -> None:
    global _sock, _ctx, _sock_pid, _dropped, _retry
    sock, ctx, pid = _sock, _ctx, _sock_pid
    _sock = _ctx = None
    _sock_pid = 0
    if _closed and (_queue or _retry):
        n = len(_queue) + sum(n for _, n in _retry)
        _queue.clear()
        _retry = []
        _dropped += n
    if sock is None:
        return
    if pid != os.getpid():  # another process's: keep it alive, never touch it
        _orphans.append((sock, ctx))
        return
    try:
        if linger_ms:
            sock.setsockopt(zmq.LINGER, linger_ms)
        sock.close()
        ctx.term()  # waits at most linger_ms for queued frames to reach a connected agent
    except Exception:
        pass


@atexit.register
def _at_exit() -> None:
    try:
        if _pid == os.getpid():
            close(linger_ms=EXIT_LINGER_MS)
    except Exception:
        pass
