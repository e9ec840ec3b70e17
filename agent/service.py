"""The agent: samples the host, ingests spans, attributes energy, hands records to exporters.

One thread runs the loop: receive span events, and every ``flush_interval_ms`` attribute
the window up to the watermark. The watermark is the latest time every live device's
energy is settled, held back to the start of recently begun open spans so that their final
weights (set at span end, e.g. tokens) are known when their time is shared out.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import psutil

from wattspan.agent import devices as device_rules
from wattspan.agent.attribution import Attributor
from wattspan.agent.clock import UnixOffset
from wattspan.agent.host import HostSampling
from wattspan.agent.ingest import SpanSocket, SpanTable
from wattspan.agent.spans import DeviceInterval, Span, SpanEnergy
from wattspan.collectors.base import Quality
from wattspan.config import Settings

_log = logging.getLogger(__name__)

#: Records kept per failing exporter before the oldest are dropped (and counted).
MAX_PENDING_RECORDS = 200_000


@dataclass
class AgentOptions:
    endpoint: str
    allow_remote: bool = False
    socket_group: str | None = None
    flush_interval_ms: float = 200.0
    #: Device records cover this much time each.
    report_interval_s: float = 10.0
    #: Spans open longer than this are closed as ``incomplete``.
    span_timeout_s: float = 600.0
    #: How long attribution waits for an open span's final weight.
    weight_hold_s: float = 30.0
    max_spans: int = 100_000


class CpuTimeShares:
    """Each process's share of the host's busy CPU time since the last call, for splitting
    CPU energy among processes before their spans (psutil; pids it cannot read get none)."""

    def __init__(self) -> None:
        self._host_busy: float | None = None
        self._proc: dict[int, float] = {}

    @staticmethod
    def _busy(times) -> float:
        return times.user + times.system + getattr(times, "nice", 0.0) + \
            getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)

    def shares(self, pids: set[int]) -> dict[int, float] | None:
        host = self._busy(psutil.cpu_times())
        current = {}
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            current[pid] = t.user + t.system
        previous_host = self._host_busy
        previous = self._proc
        self._host_busy, self._proc = host, current
        if previous_host is None or host <= previous_host:
            return None
        busy = host - previous_host
        shares = {pid: min(1.0, max(0.0, (cpu - previous[pid]) / busy))
                  for pid, cpu in current.items() if pid in previous}
        total = sum(shares.values())
        if total > 1.0:  # sampling skew between the reads
            shares = {pid: s / total for pid, s in shares.items()}
        return shares


class Agent:
    """The sidecar (also embedded in ``wattspan run``)."""

    def __init__(self, settings: Settings, options: AgentOptions, exporters: list,
                 host: HostSampling | None = None) -> None:
        """``host``: sampling already started by the caller (``wattspan run``), who stops it."""
        self.settings = settings
        self.options = options
        self.exporters = exporters
        self._owns_host = host is None
        self.host = host or HostSampling(settings)
        self.unix = UnixOffset()
        self.hostname = socket.gethostname()
        self.table: SpanTable | None = None
        self.socket: SpanSocket | None = None
        self.attributor: Attributor | None = None
        self.cpu_shares = CpuTimeShares()
        self._gpus_by_pid: dict[int, set[str]] = {}
        self._gpus_by_pid_at = 0
        self._device_cache: dict[tuple, tuple[str, ...]] = {}
        self._report: dict[str, list[DeviceInterval]] = defaultdict(list)
        self._report_start_ns: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.spans_exported = 0
        self.export_failures = 0
        self._pending: dict[str, list[dict]] = {}
        self.records_dropped = 0

    # --- lifecycle

    def start(self) -> None:
        self.socket = SpanSocket(self.options.endpoint, allow_remote=self.options.allow_remote,
                                 group=self.options.socket_group)
        if self._owns_host:
            try:
                self.host.start()
            except BaseException:
                self.socket.close()
                raise
        self.table = SpanTable(self._resolve_devices, max_spans=self.options.max_spans)
        self.attributor = Attributor(self.host.timeline)
        self._thread = threading.Thread(target=self._run, name="wattspan-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking spans, attribute what the readings allow, flush."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        # Readings past the last span's end, then everything that ended is attributed;
        # spans still open end now, incomplete.
        now = time.monotonic_ns()
        self._drain(0)
        self.table.expire(now + 1, now)
        self.host.wait_settled(now)
        if self._owns_host:
            self.host.stop()
        self._process(final=True)
        self._flush_report(force=True)
        self.socket.close()
        for exporter in self.exporters:
            try:
                exporter.shutdown()
            except Exception as err:  # an exporter must not stop the others
                _log.warning("exporter %s shutdown failed: %s", exporter.name, err)

    # --- the loop

    def _run(self) -> None:
        interval_ns = int(self.options.flush_interval_ms * 1e6)
        next_flush = time.monotonic_ns() + interval_ns
        while not self._stop.is_set():
            wait_ms = max(0, (next_flush - time.monotonic_ns()) // 1_000_000)
            self._drain(min(wait_ms, 100))
            if time.monotonic_ns() >= next_flush:
                try:
                    self._process()
                except Exception:  # the agent keeps running whatever one window does
                    _log.exception("attribution failed for this window")
                next_flush += interval_ns

    def _drain(self, timeout_ms: int) -> None:
        for frame in self.socket.receive(timeout_ms):
            self.table.handle_frame(frame)

    # --- devices of a span

    def _resolve_devices(self, msg, default: bool = False) -> tuple[str, ...]:
        explicit = bool(msg.devices) and not default
        gpus_by_pid = self._gpu_processes()  # refreshed every second; clears the cache
        key = (msg.pid, msg.devices if explicit else None, msg.cuda_visible_devices)
        cached = self._device_cache.get(key)
        if cached is not None:
            return cached
        found = self.host.devices
        if explicit:
            chosen = device_rules.select(found, list(msg.devices), msg.cuda_visible_devices)
        else:
            chosen = device_rules.default_for(found, msg.pid, gpus_by_pid,
                                              msg.cuda_visible_devices)
        resolved = tuple(d.device_id for d in chosen)
        if len(self._device_cache) >= 4096:
            self._device_cache.clear()
        self._device_cache[key] = resolved
        return resolved

    def _gpu_processes(self) -> dict[int, set[str]]:
        now = time.monotonic_ns()
        if now - self._gpus_by_pid_at > 1_000_000_000:
            self._gpus_by_pid_at = now
            found: dict[int, set[str]] = {}
            for collector in self.host.discovery.collectors:
                lookup = getattr(collector, "gpus_by_pid", None)
                if lookup is not None:
                    for pid, ids in lookup().items():
                        found.setdefault(pid, set()).update(ids)
            self._gpus_by_pid = found
            self._device_cache.clear()
        return self._gpus_by_pid

    # --- attribution

    def _window_end(self, now_ns: int, final: bool) -> int | None:
        mark = self.host.watermark_ns(now_ns)
        if mark is None:
            # No device with readings: spans still finish, with no energy to share.
            mark = now_ns - int(self.host.max_lateness_s * 1e9)
        if not final:
            hold_from = now_ns - int(self.options.weight_hold_s * 1e9)
            for span in self.table.open.values():
                if hold_from < span.start_ns < mark:
                    mark = span.start_ns
        return mark

    def _process(self, final: bool = False) -> None:
        now = time.monotonic_ns()
        table = self.table
        table.expire(now - int(self.options.span_timeout_s * 1e9), now)
        end = self._window_end(now, final)
        cursor = self.attributor.cursor_ns
        if cursor is None:
            starts = [s.start_ns for s in table.ended] + [s.start_ns for s in table.open.values()]
            first = min(starts) if starts else end
            cursor = min(first, end)
        if end is None or end <= cursor:
            return
        active = [s for s in table.ended if s.end_ns > cursor] + \
                 [s for s in table.open.values() if s.start_ns < end]
        shares = None
        cpu_ids = [d.device_id for d in device_rules.host_devices(self.host.devices)]
        if cpu_ids:
            pids = {s.pid for s in active}
            by_pid = self.cpu_shares.shares(pids)
            if by_pid is not None:
                shares = {device_id: by_pid for device_id in cpu_ids}
        intervals = self.attributor.advance(end, active, process_share=shares,
                                            start_ns=cursor)
        self._collect(intervals)
        records = []
        keep = []
        self.unix.refresh()  # once per window: NTP may have stepped the wall clock
        while table.ended:
            span = table.ended.popleft()
            if span.end_ns <= end:
                result = self.attributor.take(span.key)
                records.append(self._span_record(span, result))
            else:
                keep.append(span)
        table.ended.extend(keep)
        self._export(records)
        self._flush_report()

    # --- records

    def _span_record(self, span: Span, result: SpanEnergy | None) -> dict:
        devices = {}
        quality = Quality.PARTIAL
        energy = dynamic = None
        if result is not None and result.devices:
            devices = {d: {"energy_j": s.energy_j, "dynamic_energy_j": s.dynamic_energy_j,
                           "quality": s.quality.value} for d, s in result.devices.items()}
            energy, dynamic, quality = result.energy_j, result.dynamic_energy_j, result.quality
        if span.status == "incomplete":
            quality = Quality.PARTIAL
        record = {
            "type": "span",
            "name": span.name,
            "span_id": f"{span.pid:x}-{span.span_id:x}",
            "request_id": span.request_id,
            "start_unix_ns": self.unix.to_unix_ns(span.start_ns),
            "end_unix_ns": self.unix.to_unix_ns(span.end_ns),
            "duration_s": (span.end_ns - span.start_ns) * 1e-9,
            "weight": span.weight,
            "energy_j": energy,
            "dynamic_energy_j": dynamic,
            "quality": quality.value,
            "status": span.status,
            "devices": devices,
            "attributes": span.attributes,
            "pid": span.pid,
            "host": self.hostname,
        }
        if span.trace_id:
            record["trace_id"] = span.trace_id
            record["otel_span_id"] = span.otel_span_id
        return record

    def _collect(self, intervals: list[DeviceInterval]) -> None:
        for interval in intervals:
            if self._report_start_ns is None:
                self._report_start_ns = interval.start_ns
            self._report[interval.device_id].append(interval)

    def _flush_report(self, force: bool = False) -> None:
        if self._report_start_ns is None or not self._report:
            return
        last = max(i.end_ns for parts in self._report.values() for i in parts)
        if not force and last - self._report_start_ns < self.options.report_interval_s * 1e9:
            return
        records = []
        for device_id, parts in self._report.items():
            start, end = parts[0].start_ns, parts[-1].end_ns
            known = [p for p in parts if p.energy_j is not None]
            quality = Quality.worst(*(p.quality for p in parts))
            if len(known) < len(parts):
                quality = Quality.PARTIAL  # windows with no readings: unknown, not 0 J
            energy = sum(p.energy_j for p in known) if known else None
            records.append({
                "type": "device",
                "device": device_id,
                "start_unix_ns": self.unix.to_unix_ns(start),
                "end_unix_ns": self.unix.to_unix_ns(end),
                "energy_j": energy,
                "attributed_j": sum(p.attributed_j for p in known) if known else None,
                "unattributed_j": sum(p.unattributed_j for p in known) if known else None,
                "avg_power_w": energy / ((end - start) * 1e-9)
                if energy is not None and end > start else None,
                "idle_w": parts[-1].idle_w,
                "quality": quality.value,
                "host": self.hostname,
            })
        self._report.clear()
        self._report_start_ns = None
        self._export(records)

    def _export(self, records: list[dict]) -> None:
        """Hand records to every exporter; a failed batch is kept (bounded) and retried with
        the next one, so an outage such as a full disk loses nothing it can hold."""
        self.spans_exported += sum(1 for r in records if r["type"] == "span")
        for exporter in self.exporters:
            pending = self._pending.setdefault(exporter.name, [])
            pending.extend(records)
            if not pending:
                continue
            try:
                ok = exporter.export(pending)
            except Exception as err:  # the agent keeps running when an exporter fails
                ok = False
                self.table.log.warn(f"export-{exporter.name}", "exporter %s failed: %s",
                                    exporter.name, err)
            if ok:
                pending.clear()
                continue
            self.export_failures += 1
            overflow = len(pending) - MAX_PENDING_RECORDS
            if overflow > 0:
                del pending[:overflow]
                self.records_dropped += overflow
                self.table.log.warn(f"drop-{exporter.name}", "exporter %s is failing: dropped "
                                    "the %d oldest records", exporter.name, overflow)


