"""A durable on-disk spool in front of one exporter, so an outage or a crash loses nothing.

``Spool.append`` writes records to numbered segment files (JSON Lines, each line prefixed with
the CRC32 of its JSON, so a line torn by a crash is detected and skipped) and fsyncs them before
it returns. ``SpoolDelivery.pump`` hands the oldest unacknowledged records to the exporter and,
once it returns True, persists the acknowledgement (segment number and byte offset) atomically.
After a restart everything unacknowledged is delivered again: at-least-once, where only the
batch in flight at the crash can arrive twice.

One process per directory. The spool is thread-safe, so the agent may append from one thread
and pump from another; delivery has no thread of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from .base import Exporter

_log = logging.getLogger(__name__)

MIB = 1024 * 1024
ACK_FILE = "ack.json"
ACK_TEMP_FILE = ACK_FILE + ".tmp"
_SEGMENT_RE = re.compile(r"^segment-(\d{20})\.jsonl$")
_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_ERROR_LOG_INTERVAL_S = 60.0


def segment_name(seq: int) -> str:
    """File name of segment ``seq``: zero-padded so names sort in sequence order."""
    return f"segment-{seq:020d}.jsonl"


def _encode(record: dict) -> bytes:
    body = json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes) -> dict | None:
    """The record on ``line``, or None where the line is torn (no newline) or corrupt."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _write_synced(file, data: bytes) -> None:
    """Write all of ``data`` and fsync it: ``append`` returns only once its records are durable."""
    view = memoryview(data)
    while view:
        view = view[file.write(view):]
    os.fsync(file.fileno())


def _fsync_dir(directory: str) -> None:
    """Make a created, replaced or removed name durable, not only the file's contents."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Segment:
    size_bytes: int
    pending_records: int  # valid records past the ack


class SpoolBatch(NamedTuple):
    """Records read by ``Spool.read``; commit it once the exporter has acknowledged them."""

    records: list[dict]
    end: tuple[int, int]  # (segment, byte offset) just past the batch
    counts: dict[int, int]  # records taken from each segment


class Spool:
    """Append-only segments under ``directory`` plus the acknowledged position in ``ack.json``.

    When an append would take the segments past ``max_bytes`` the oldest whole segments are
    dropped, acknowledged or not: the count goes to ``dropped_records`` with one warning per
    drop event, since a bounded disk footprint matters more than the oldest readings.
    """

    def __init__(self, directory: str | os.PathLike, *, max_bytes: int = 256 * MIB,
                 segment_bytes: int = 4 * MIB, clock: Callable[[], float] = time.monotonic):
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self.dropped_records = 0
        self.append_failures = 0  # batches refused because the disk was full
        self.corrupt_lines = 0  # torn or corrupt lines skipped
        self._corrupt_mark = (0, 0)  # corrupt lines before this position were counted already
        self._last_disk_log_at: float | None = None
        self._file = None  # the active segment, open for appending
        self._active: int | None = None
        os.makedirs(self.directory, exist_ok=True)
        self._segments: dict[int, _Segment] = {}
        for name in os.listdir(self.directory):
            match = _SEGMENT_RE.match(name)
            if match:
                size = os.path.getsize(os.path.join(self.directory, name))
                self._segments[int(match.group(1))] = _Segment(size, 0)
        self._ack = self._read_ack()
        # Writes always go to a fresh segment, never after a line a crash may have torn.
        self._next_seq = max([self._ack[0], *self._segments]) + 1
        self._normalize()  # also removes segments acknowledged just before a crash
        for seq, segment in self._segments.items():
            start = self._ack[1] if seq == self._ack[0] else 0
            segment.pending_records = self._count_records(seq, start, segment.size_bytes)

    # -- writing ------------------------------------------------------------------------

    def append(self, records: list[dict]) -> bool:
        """Append ``records`` durably: True once they are fsync'd, False where the disk is full.

        A full disk (ENOSPC, EDQUOT) raises nothing so the agent keeps running: the batch is not
        appended (a partial write is truncated away), ``append_failures`` counts it and a warning
        is logged at most once a minute; the records stay the caller's to keep or count. Records
        that are not JSON-serialisable raise before anything is written; other OS errors (a
        removed directory, permissions) propagate.
        """
        if not records:
            return True
        data = b"".join(_encode(r) for r in records)
        if len(data) > self.max_bytes:
            raise ValueError(f"a batch of {len(data)} bytes cannot fit max_bytes={self.max_bytes}")
        with self._lock:
            self._make_room(len(data))
            try:
                self._write(data)
            except OSError as err:
                if err.errno not in _FULL_DISK_ERRNOS:
                    raise
                self.append_failures += 1
                self._log_disk_error("disk full, %d records not spooled (%s)", len(records), err)
                return False
            segment = self._segments[self._active]
            segment.size_bytes += len(data)
            segment.pending_records += len(records)
            return True

    def _write(self, data: bytes) -> None:
        active = self._segments.get(self._active)
        if active is not None and active.size_bytes and (
                active.size_bytes + len(data) > self.segment_bytes):
            self._close_active()
        if self._active is None:
            seq = self._next_seq
            self._file = open(self._path(seq), "ab", buffering=0)  # kept open: the active segment
            self._next_seq += 1
            self._active = seq
            self._segments[seq] = _Segment(0, 0)
            _fsync_dir(self.directory)
        segment = self._segments[self._active]
        try:
            _write_synced(self._file, data)
        except OSError:
            try:
                self._file.truncate(segment.size_bytes)
                os.fsync(self._file.fileno())
            except OSError:
                # The partial batch stays; reading skips its torn tail. Never write after it.
                with contextlib.suppress(OSError):
                    segment.size_bytes = os.fstat(self._file.fileno()).st_size
                self._close_active()
            raise

    def _make_room(self, size_bytes: int) -> None:
        """Drop the oldest whole segments until ``size_bytes`` more fit in ``max_bytes``."""
        total = sum(s.size_bytes for s in self._segments.values())
        dropped_records = dropped_segments = 0
        while self._segments and total + size_bytes > self.max_bytes:
            seq = min(self._segments)
            segment = self._segments[seq]
            if seq == self._active:
                self._close_active()
            total -= segment.size_bytes
            dropped_records += segment.pending_records
            dropped_segments += 1
            self._remove(seq)
            self._ack = max(self._ack, (seq + 1, 0))
        if not dropped_segments:
            return
        self.dropped_records += dropped_records
        self._normalize()
        self._persist_ack()
        _log.warning("spool %s over max_bytes=%d: dropped %d unacknowledged records "
                     "(%d oldest segments)", self.directory, self.max_bytes, dropped_records,
                     dropped_segments)

    # -- reading and acknowledging ------------------------------------------------------

    def read(self, max_records: int) -> SpoolBatch:
        """The oldest unacknowledged records, at most ``max_records``, skipping torn lines."""
        with self._lock:
            records: list[dict] = []
            counts: dict[int, int] = {}
            end = self._ack
            for seq in sorted(s for s in self._segments if s >= self._ack[0]):
                offset = self._ack[1] if seq == self._ack[0] else 0
                size = self._segments[seq].size_bytes
                with open(self._path(seq), "rb") as file:
                    file.seek(offset)
                    while offset < size and len(records) < max_records:
                        line = file.readline(size - offset)
                        if not line:
                            break  # shorter than recorded: truncated under us
                        start, offset = offset, offset + len(line)
                        record = _decode(line)
                        if record is not None:
                            records.append(record)
                            counts[seq] = counts.get(seq, 0) + 1
                        elif (seq, start) >= self._corrupt_mark:
                            self.corrupt_lines += 1
                            self._corrupt_mark = (seq, offset)
                            _log.warning("spool %s: skipped a torn or corrupt line at %s:%d",
                                         self.directory, segment_name(seq), start)
                end = (seq, offset)
                if len(records) >= max_records:
                    break
            return SpoolBatch(records, end, counts)

    def commit(self, batch: SpoolBatch) -> None:
        """Acknowledge ``batch`` durably and remove the segments it finished."""
        with self._lock:
            if batch.end <= self._ack:
                return  # dropped meanwhile, or nothing read
            for seq, count in batch.counts.items():
                segment = self._segments.get(seq)
                if segment is not None:
                    segment.pending_records = max(0, segment.pending_records - count)
            self._ack = batch.end
            self._persist_ack()
            self._normalize()

    def _normalize(self) -> None:
        """Move the ack to the first segment with unread bytes, removing finished ones."""
        seq, offset = self._ack
        for finished in [s for s in self._segments if s < seq]:
            if finished == self._active:
                self._close_active()
            self._remove(finished)
        while True:
            segment = self._segments.get(seq)
            if segment is not None:
                if offset < segment.size_bytes:
                    break
                if seq == self._active:
                    self._close_active()
                self._remove(seq)
            later = [s for s in self._segments if s > seq]
            if not later:
                break
            seq, offset = min(later), 0
        self._ack = (seq, offset)

    # -- files --------------------------------------------------------------------------

    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, segment_name(seq))

    def _read_ack(self) -> tuple[int, int]:
        try:
            with open(os.path.join(self.directory, ACK_FILE), "rb") as file:
                ack = json.load(file)
            return int(ack["segment"]), int(ack["offset_bytes"])
        except FileNotFoundError:
            return (0, 0)
        except (OSError, ValueError, KeyError, TypeError) as err:
            # Replaced atomically, so this is damage from outside: redeliver rather than lose.
            _log.warning("spool %s: unreadable %s (%s), redelivering everything",
                         self.directory, ACK_FILE, err)
            return (0, 0)

    def _persist_ack(self) -> None:
        """Write the ack to a temporary file, fsync it and rename it over ``ack.json``, so a
        crash leaves the old ack or the new one, never half of one."""
        temp = os.path.join(self.directory, ACK_TEMP_FILE)
        text = json.dumps({"segment": self._ack[0], "offset_bytes": self._ack[1]})
        try:
            with open(temp, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, os.path.join(self.directory, ACK_FILE))
            _fsync_dir(self.directory)
        except OSError as err:
            # Not fatal: the in-memory ack holds; a restart before the next success redelivers.
            self._log_disk_error("could not persist %s (%s)", ACK_FILE, err)

    def _count_records(self, seq: int, start: int, size: int) -> int:
        count = 0
        with open(self._path(seq), "rb") as file:
            file.seek(start)
            offset = start
            while offset < size:
                line = file.readline(size - offset)
                if not line:
                    break
                offset += len(line)
                count += _decode(line) is not None
        return count

    def _remove(self, seq: int) -> None:
        del self._segments[seq]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(seq))

    def _close_active(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._active = None

    def _log_disk_error(self, message: str, *args) -> None:
        now = self._clock()
        if self._last_disk_log_at is None or (
                now - self._last_disk_log_at >= _DISK_ERROR_LOG_INTERVAL_S):
            self._last_disk_log_at = now
            _log.warning("spool %s: " + message, self.directory, *args)

    # -- stats --------------------------------------------------------------------------

    @property
    def pending_records(self) -> int:
        with self._lock:
            return sum(s.pending_records for s in self._segments.values())

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            total = sum(s.size_bytes for s in self._segments.values())
            head = self._segments.get(self._ack[0])
            return total - (min(self._ack[1], head.size_bytes) if head else 0)

    def close(self) -> None:
        """Close the active segment; the next append (or a new Spool) starts another."""
        with self._lock:
            self._close_active()


class SpoolDelivery:
    """Delivers a spool's records to ``exporter``, oldest first, when the agent calls ``pump``.

    A failed export (False or an exception) is retried after an exponential backoff with full
    jitter (uniform in [0, min(max_backoff_s, base_backoff_s * 2**(failures-1))]), so that many
    agents coming back from one outage do not retry in step; a success resets it. As an
    exporter itself, ``export`` only spools, so the agent can put this where the exporter was.
    """

    def __init__(self, spool: Spool, exporter: Exporter, *, batch_max_records: int = 1000,
                 base_backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None):
        if batch_max_records <= 0:
            raise ValueError("batch_max_records must be positive")
        self.spool = spool
        self.exporter = exporter
        self.name = f"spool:{exporter.name}"
        self.batch_max_records = batch_max_records
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self.delivered_records = 0
        self.export_failures = 0
        self.next_attempt_at: float | None = None  # None: no retry pending, pump delivers now
        self._consecutive_failures = 0

    def export(self, records: list[dict]) -> bool:
        return self.spool.append(records)

    def pump(self, now: float | None = None) -> int:
        """Deliver what is pending now, unless a retry is not yet due; records acknowledged.

        Stops after the records pending at the call, so constant appends cannot keep it here.
        """
        now = self._clock() if now is None else now
        if self.next_attempt_at is not None and now < self.next_attempt_at:
            return 0
        target = self.spool.pending_records
        acked = 0
        while True:
            batch = self.spool.read(self.batch_max_records)
            if not batch.records:
                self.spool.commit(batch)  # moves past skipped torn lines, if any
                return acked
            try:
                ok = self.exporter.export(batch.records)
            except Exception as err:  # the exporter's failure must not stop the agent's loop
                _log.warning("exporter %s raised %r", self.exporter.name, err)
                ok = False
            if not ok:
                self._schedule_retry(now)
                return acked
            self.spool.commit(batch)
            acked += len(batch.records)
            self.delivered_records += len(batch.records)
            self._consecutive_failures = 0
            self.next_attempt_at = None
            if acked >= target:
                return acked

    def _schedule_retry(self, now: float) -> None:
        self.export_failures += 1
        self._consecutive_failures += 1
        exponent = min(self._consecutive_failures - 1, 62)
        cap_s = min(self.max_backoff_s, self.base_backoff_s * 2.0 ** exponent)
        delay_s = self._rng.uniform(0.0, cap_s)
        self.next_attempt_at = now + delay_s
        _log.warning("export of spooled records to %s failed (%d in a row); retrying in %.1f s",
                     self.exporter.name, self._consecutive_failures, delay_s)

    def stats(self) -> dict:
        return {
            "pending_records": self.spool.pending_records,
            "pending_bytes": self.spool.pending_bytes,
            "dropped_records": self.spool.dropped_records,
            "corrupt_lines": self.spool.corrupt_lines,
            "append_failures": self.spool.append_failures,
            "delivered_records": self.delivered_records,
            "export_failures": self.export_failures,
            "next_attempt_at": self.next_attempt_at,
        }

    def shutdown(self) -> None:
        """Shut the exporter down and close the spool; what is pending stays for next time."""
        self.exporter.shutdown()
        self.spool.close()
