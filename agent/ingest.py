"""Span ingest: the socket applications send to, and the table of open spans.

Every message is validated (``wattspan.protocol.decode``); whatever is malformed, oversized,
replayed, out of order or implausibly timed is counted and logged at a bounded rate, and
never reaches the attribution. Tables are bounded, so a misbehaving client costs the agent a
fixed amount of memory, and ZeroMQ's fair queueing keeps it from starving other clients.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import socket
import stat
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import zmq

from wattspan import protocol
from wattspan.agent.spans import Span

_log = logging.getLogger(__name__)

#: Spans may begin this far in the past (clients buffer briefly) or in the future (none
#: should: the clock is shared) before they are rejected as implausible.
MAX_PAST_NS = 600 * 10**9
MAX_FUTURE_NS = 5 * 10**9


class EndpointError(ValueError):
    """The endpoint cannot be served as configured."""


@dataclass
class IngestStats:
    frames: int = 0
    begins: int = 0
    ends: int = 0
    malformed: int = 0
    replayed: int = 0
    orphan_ends: int = 0
    out_of_order: int = 0
    implausible_time: int = 0
    table_full: int = 0


class RateLimitedLog:
    """Logs the first event of each kind, then at most one summary per interval."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_ns = int(interval_s * 1e9)
        self._last: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args) -> None:
        now = time.monotonic_ns()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_ns:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        self._last[kind] = now
        suffix = f" ({suppressed} more since the last report)" if suppressed else ""
        _log.warning(message + suffix, *args)


def check_endpoint(endpoint: str, *, allow_remote: bool) -> str:
    """Validate an endpoint: ``ipc://PATH``, or ``tcp://HOST:PORT`` on loopback unless
    ``allow_remote`` (nothing listens on other interfaces by accident)."""
    if endpoint.startswith("ipc://"):
        if not endpoint[len("ipc://"):]:
            raise EndpointError("ipc:// endpoint without a path")
        return endpoint
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise EndpointError(f"{endpoint}: expected tcp://HOST:PORT")
        if allow_remote:
            return endpoint
        if host == "*":
            raise EndpointError(f"{endpoint} listens on every interface; span sockets listen "
                                "on loopback or a Unix socket unless --allow-remote is given")
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except (socket.gaierror, UnicodeError) as err:
            raise EndpointError(f"{endpoint}: cannot resolve {host}: {err}") from None
        if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback
                                  for a in addresses):
            raise EndpointError(f"{endpoint} is not a loopback address; span sockets listen "
                                "on loopback or a Unix socket unless --allow-remote is given")
        return endpoint
    raise EndpointError(f"{endpoint}: endpoints are ipc://PATH or tcp://HOST:PORT")


def _prepare_ipc_dir(path: Path, group: str | None) -> None:
    """The socket's directory: created owned by the agent, not writable by others."""
    directory = path.parent
    directory.mkdir(mode=0o750 if group else 0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_mode & stat.S_IWOTH:
        raise EndpointError(f"{directory} is writable by everyone; refusing to put the span "
                            "socket there")
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise EndpointError(f"{path} exists and is not a socket")
        path.unlink()  # a stale socket from an earlier agent


def _secure_ipc_socket(path: Path, group: str | None) -> None:
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise EndpointError(f"socket group {group!r} does not exist") from None
        os.chown(path, -1, gid)
        os.chown(path.parent, -1, gid)
    os.chmod(path, 0o660)


class SpanSocket:
    """The PULL socket applications push begin/end events to."""

    def __init__(self, endpoint: str, *, allow_remote: bool = False, group: str | None = None,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = check_endpoint(endpoint, allow_remote=allow_remote)
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        # A peer sending a frame over the limit is disconnected by ZeroMQ before it is read.
        self.socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        # Frames held per connected client while the agent is busy: bounds what one client
        # can make the agent hold (at most this many frames of MAX_FRAME_BYTES); beyond it
        # the client's own queue fills and it drops and counts.
        self.socket.setsockopt(zmq.RCVHWM, 256)
        ipc_path = None
        if self.endpoint.startswith("ipc://"):
            ipc_path = Path(self.endpoint[len("ipc://"):])
            _prepare_ipc_dir(ipc_path, group)
        try:
            self.socket.bind(self.endpoint)
        except zmq.ZMQError as err:
            self.socket.close()
            raise EndpointError(f"cannot listen on {self.endpoint}: {err}") from None
        if ipc_path is not None:
            _secure_ipc_socket(ipc_path, group)
        self.ipc_path = ipc_path

    def receive(self, timeout_ms: int, limit: int = 10_000) -> list[bytes]:
        """Frames waiting now (after at most ``timeout_ms`` for the first)."""
        frames = []
        if not self.socket.poll(timeout_ms):
            return frames
        while len(frames) < limit:
            try:
                frames.append(self.socket.recv(zmq.NOBLOCK, copy=True))
            except zmq.Again:
                break
        return frames

    def close(self) -> None:
        self.socket.close(linger=0)
        if self.ipc_path is not None:
            try:
                self.ipc_path.unlink()
            except OSError:
                pass


class SpanTable:
    """Open spans and ended spans awaiting attribution, with bounded memory.

    ``resolve_devices(begin)`` turns a BEGIN's device request into device ids.
    """

    def __init__(self, resolve_devices, *, max_spans: int = 100_000,
                 clock=time.monotonic_ns) -> None:
        self.resolve_devices = resolve_devices
        self.max_spans = max_spans
        self.clock = clock
        self.open: dict[tuple[int, int], Span] = {}
        self.ended: deque[Span] = deque()
        self._finished: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.stats = IngestStats()
        self.log = RateLimitedLog()

    def handle_frame(self, frame: bytes) -> None:
        self.stats.frames += 1
        try:
            messages = protocol.decode_frame(frame)
        except protocol.ProtocolError as err:
            self.stats.malformed += 1
            self.log.warn("malformed", "dropped a malformed span message: %s", err)
            return
        for message in messages:
            if isinstance(message, protocol.Begin):
                self._begin(message)
            else:
                self._end(message)

    def _plausible(self, t_ns: int) -> bool:
        now = self.clock()
        if now - MAX_PAST_NS <= t_ns <= now + MAX_FUTURE_NS:
            return True
        self.stats.implausible_time += 1
        self.log.warn("time", "dropped a span event stamped %.1f s from now: clocks must be "
                      "CLOCK_MONOTONIC of this host", (t_ns - now) / 1e9)
        return False

    def _begin(self, msg) -> None:
        key = (msg.pid, msg.span_id)
        if key in self.open or key in self._finished:
            self.stats.replayed += 1
            self.log.warn("replay", "dropped a repeated begin for span %s of pid %s",
                          msg.span_id, msg.pid)
            return
        if not self._plausible(msg.t_ns):
            return
        if len(self.open) + len(self.ended) >= self.max_spans:
            self.stats.table_full += 1
            self.log.warn("full", "span table full (%d spans): dropped a new span",
                          self.max_spans)
            return
        try:
            devices = tuple(self.resolve_devices(msg))
        except ValueError as err:
            self.log.warn("devices", "span %r: %s; using the process's default devices",
                          msg.name, err)
            devices = tuple(self.resolve_devices(msg, default=True))
        self.stats.begins += 1
        self.open[key] = Span(
            pid=msg.pid, span_id=msg.span_id, name=msg.name, start_ns=msg.t_ns,
            weight=msg.weight, request_id=msg.request_id, devices=devices,
            attributes=dict(msg.attributes) if msg.attributes else {},
            trace_id=msg.trace_id, otel_span_id=msg.otel_span_id)

    def _end(self, msg) -> None:
        key = (msg.pid, msg.span_id)
        span = self.open.get(key)
        if span is None:
            if key in self._finished:
                self.stats.replayed += 1
                self.log.warn("replay", "dropped a repeated end for span %s of pid %s",
                              msg.span_id, msg.pid)
            else:
                self.stats.orphan_ends += 1
                self.log.warn("orphan", "dropped an end for unknown span %s of pid %s (its "
                              "begin was lost or never sent)", msg.span_id, msg.pid)
            return
        if msg.t_ns < span.start_ns:
            self.stats.out_of_order += 1
            self.log.warn("order", "span %r ends before it begins; dropped", span.name)
            del self.open[key]
            self._remember(key)
            return
        self.stats.ends += 1
        span.end_ns = msg.t_ns
        if msg.weight is not None:
            span.weight = msg.weight
        if getattr(msg, "name", None):
            span.name = msg.name
        del self.open[key]
        self._remember(key)
        self.ended.append(span)

    def _remember(self, key) -> None:
        self._finished[key] = None
        while len(self._finished) > self.max_spans:
            self._finished.popitem(last=False)

    def expire(self, older_than_ns: int, now_ns: int) -> list[Span]:
        """Close spans that began before ``older_than_ns`` and never ended: ``incomplete``."""
        expired = [s for s in self.open.values() if s.start_ns < older_than_ns]
        for span in expired:
            span.end_ns = now_ns
            span.status = "incomplete"
            del self.open[span.key]
            self._remember(span.key)
            self.ended.append(span)
        return expired
