"""The on-disk spool: durable appends, at-least-once delivery, bounded size, full disks."""

from __future__ import annotations

import errno
import json
import logging
import os
import random

import pytest

from wattspan.exporters import spool as spool_module
from wattspan.exporters.spool import ACK_FILE, ACK_TEMP_FILE, Spool, SpoolDelivery


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedExporter:
    """Returns (or raises) the scripted results in turn, then True; keeps accepted batches."""

    name = "scripted"

    def __init__(self, results=()):
        self.results = list(results)
        self.batches: list[list[dict]] = []
        self.calls = 0

    def export(self, records: list[dict]) -> bool:
        self.calls += 1
        result = self.results.pop(0) if self.results else True
        if isinstance(result, Exception):
            raise result
        if result:
            self.batches.append(list(records))
        return result

    @property
    def records(self) -> list[dict]:
        return [r for batch in self.batches for r in batch]

    def shutdown(self) -> None:
        pass


class RecordingRandom(random.Random):
    """A seeded Random that remembers the bounds each backoff was drawn from."""

    def __init__(self, seed: int = 7):
        super().__init__(seed)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a, b):
        self.bounds.append((a, b))
        return super().uniform(a, b)


def rec(i: int) -> dict:
    return {"i": i, "energy_j": 1.5, "pad": "x" * 40}


def segments(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("segment-"))


def line_bytes(record: dict) -> int:
    return len(spool_module._encode(record))


def test_append_then_pump_delivers_in_order(tmp_path):
    clock = FakeClock()
    spool = Spool(tmp_path, segment_bytes=3 * line_bytes(rec(0)), clock=clock)
    exporter = ScriptedExporter()
    delivery = SpoolDelivery(spool, exporter, batch_max_records=4, clock=clock)

    assert spool.append([rec(i) for i in range(5)])
    assert spool.append([rec(i) for i in range(5, 10)])
    assert spool.pending_records == 10
    assert spool.pending_bytes == 10 * line_bytes(rec(0))

    assert delivery.pump() == 10
    assert exporter.records == [rec(i) for i in range(10)]
    assert [len(b) for b in exporter.batches] == [4, 4, 2]
    assert delivery.stats() == {
        "pending_records": 0, "pending_bytes": 0, "dropped_records": 0, "corrupt_lines": 0,
        "append_failures": 0, "delivered_records": 10, "export_failures": 0,
        "next_attempt_at": None,
    }
    assert delivery.pump() == 0  # nothing pending: the exporter is not called
    assert exporter.calls == 3


def test_failure_backs_off_with_full_jitter_and_resets_after_success(tmp_path):
    clock = FakeClock(0.0)
    rng = RecordingRandom()
    exporter = ScriptedExporter([False, RuntimeError("endpoint down"), False, False, False,
                                 True, False])
    spool = Spool(tmp_path, clock=clock)
    delivery = SpoolDelivery(spool, exporter, base_backoff_s=1.0, max_backoff_s=8.0,
                             clock=clock, rng=rng)
    spool.append([rec(0)])

    for failures in range(1, 6):
        assert delivery.pump() == 0
        assert delivery.export_failures == failures
        cap = min(8.0, 2.0 ** (failures - 1))
        assert rng.bounds[-1] == (0.0, cap)
        assert clock.now <= delivery.next_attempt_at <= clock.now + cap
        # Not yet due: pump does not call the exporter.
        calls = exporter.calls
        if delivery.next_attempt_at > clock.now:
            clock.now = (clock.now + delivery.next_attempt_at) / 2
            assert delivery.pump() == 0
            assert exporter.calls == calls
        clock.now = delivery.next_attempt_at
    assert [b for _, b in rng.bounds] == [1.0, 2.0, 4.0, 8.0, 8.0]

    assert delivery.pump() == 1
    assert delivery.next_attempt_at is None
    assert delivery.delivered_records == 1

    spool.append([rec(1)])
    assert delivery.pump() == 0
    assert rng.bounds[-1] == (0.0, 1.0)  # back to the base after the success
    assert spool.pending_records == 1


def test_restart_redelivers_only_unacknowledged(tmp_path):
    clock = FakeClock()
    spool = Spool(tmp_path, segment_bytes=2 * line_bytes(rec(0)), clock=clock)
    first = ScriptedExporter([True, False])
    delivery = SpoolDelivery(spool, first, batch_max_records=2, clock=clock)
    spool.append([rec(i) for i in range(5)])
    assert delivery.pump() == 2
    spool.close()  # the "crash": nothing else is written; appends were already durable

    spool = Spool(tmp_path, segment_bytes=2 * line_bytes(rec(0)), clock=clock)
    assert spool.pending_records == 3
    second = ScriptedExporter()
    assert SpoolDelivery(spool, second, clock=clock).pump() == 3
    assert second.records == [rec(i) for i in range(2, 5)]
    assert first.records == [rec(0), rec(1)]


def test_restart_appends_to_new_segment_and_keeps_order(tmp_path):
    spool = Spool(tmp_path)
    spool.append([rec(0)])
    spool.close()
    spool = Spool(tmp_path)
    spool.append([rec(1)])
    assert len(segments(tmp_path)) == 2
    exporter = ScriptedExporter()
    assert SpoolDelivery(spool, exporter).pump() == 2
    assert exporter.records == [rec(0), rec(1)]


def test_torn_last_line_is_skipped_and_counted(tmp_path, caplog):
    spool = Spool(tmp_path)
    spool.append([rec(0), rec(1), rec(2)])
    spool.close()
    [name] = segments(tmp_path)
    path = tmp_path / name
    os.truncate(path, path.stat().st_size - 5)  # the crash tore the last line

    spool = Spool(tmp_path)
    assert spool.pending_records == 2
    spool.append([rec(3)])
    exporter = ScriptedExporter([False])
    delivery = SpoolDelivery(spool, exporter, clock=FakeClock(0.0))
    with caplog.at_level(logging.WARNING, logger=spool_module.__name__):
        assert delivery.pump(now=0.0) == 0  # failed attempt reads the torn line once ...
        assert delivery.pump(now=100.0) == 3  # ... and the retry does not count it again
    assert exporter.records == [rec(0), rec(1), rec(3)]
    assert spool.corrupt_lines == 1
    assert sum("torn or corrupt" in r.getMessage() for r in caplog.records) == 1
    assert segments(tmp_path) == []


def test_corrupt_line_in_the_middle_is_skipped(tmp_path):
    spool = Spool(tmp_path)
    spool.append([rec(0), rec(1), rec(2)])
    spool.close()
    [name] = segments(tmp_path)
    data = bytearray((tmp_path / name).read_bytes())
    data[line_bytes(rec(0)) + 12] ^= 0x01  # flip a bit in the second record's JSON
    (tmp_path / name).write_bytes(bytes(data))

    spool = Spool(tmp_path)
    exporter = ScriptedExporter()
    assert SpoolDelivery(spool, exporter).pump() == 2
    assert exporter.records == [rec(0), rec(2)]
    assert spool.corrupt_lines == 1


def test_size_limit_drops_oldest_segments_with_a_count(tmp_path, caplog):
    size = line_bytes(rec(0))
    spool = Spool(tmp_path, max_bytes=4 * size, segment_bytes=2 * size)
    with caplog.at_level(logging.WARNING, logger=spool_module.__name__):
        for i in range(6):
            assert spool.append([rec(i)])
    assert spool.dropped_records == 2  # the oldest segment, records 0 and 1
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1
    assert "dropped 2 unacknowledged records" in drops[0].getMessage()
    assert spool.pending_records == 4
    assert spool.pending_bytes == 4 * size
    spool.close()

    spool = Spool(tmp_path, max_bytes=4 * size, segment_bytes=2 * size)  # the ack moved past
    exporter = ScriptedExporter()
    assert SpoolDelivery(spool, exporter).pump() == 4
    assert exporter.records == [rec(i) for i in range(2, 6)]


def test_size_limit_counts_only_unacknowledged_records_of_a_dropped_segment(tmp_path):
    size = line_bytes(rec(0))
    spool = Spool(tmp_path, max_bytes=4 * size, segment_bytes=4 * size)
    spool.append([rec(0), rec(1), rec(2)])
    exporter = ScriptedExporter([True, False])
    assert SpoolDelivery(spool, exporter, batch_max_records=1).pump() == 1
    spool.append([rec(3), rec(4)])  # does not fit: the one segment goes, rec 0 was acked
    assert spool.dropped_records == 2
    assert SpoolDelivery(spool, ScriptedExporter()).pump() == 2


def test_batch_larger_than_max_bytes_is_refused(tmp_path):
    spool = Spool(tmp_path, max_bytes=100, segment_bytes=100)
    with pytest.raises(ValueError, match="max_bytes"):
        spool.append([rec(0), rec(1)])


def test_full_disk_returns_false_truncates_and_rate_limits_the_log(tmp_path, monkeypatch,
                                                                  caplog):
    clock = FakeClock(0.0)
    spool = Spool(tmp_path, clock=clock)
    assert spool.append([rec(0)])
    [name] = segments(tmp_path)
    size_before = (tmp_path / name).stat().st_size

    def full_disk_write(file, data):
        file.write(data[: len(data) // 2])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_module, "_write_synced", full_disk_write)
    with caplog.at_level(logging.WARNING, logger=spool_module.__name__):
        assert spool.append([rec(1), rec(2)]) is False
        clock.now = 30.0
        assert spool.append([rec(3)]) is False
        clock.now = 61.0
        assert spool.append([rec(4)]) is False
    assert spool.append_failures == 3
    assert sum("disk full" in r.getMessage() for r in caplog.records) == 2
    assert (tmp_path / name).stat().st_size == size_before  # the partial batch was taken back
    assert spool.pending_records == 1

    monkeypatch.undo()
    assert spool.append([rec(5)])
    exporter = ScriptedExporter()
    assert SpoolDelivery(spool, exporter).pump() == 2
    assert exporter.records == [rec(0), rec(5)]
    assert spool.corrupt_lines == 0


def test_other_os_errors_propagate(tmp_path, monkeypatch):
    spool = Spool(tmp_path)

    def broken_write(file, data):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(spool_module, "_write_synced", broken_write)
    with pytest.raises(OSError):
        spool.append([rec(0)])


def test_ack_file_is_replaced_atomically_and_a_leftover_temp_is_ignored(tmp_path):
    spool = Spool(tmp_path)
    spool.append([rec(i) for i in range(4)])
    delivery = SpoolDelivery(spool, ScriptedExporter([True, False]), batch_max_records=2)
    assert delivery.pump() == 2
    [name] = segments(tmp_path)
    ack = json.loads((tmp_path / ACK_FILE).read_text())
    assert ack == {"segment": int(name[len("segment-"):-len(".jsonl")]),
                   "offset_bytes": 2 * line_bytes(rec(0))}
    assert not (tmp_path / ACK_TEMP_FILE).exists()
    spool.close()

    # A crash while writing the next ack leaves a half-written temporary file behind.
    (tmp_path / ACK_TEMP_FILE).write_text('{"segment": 99, "offs')
    spool = Spool(tmp_path)
    assert spool.pending_records == 2
    exporter = ScriptedExporter()
    assert SpoolDelivery(spool, exporter).pump() == 2
    assert exporter.records == [rec(2), rec(3)]


def test_unreadable_ack_file_redelivers_rather_than_loses(tmp_path):
    spool = Spool(tmp_path)
    spool.append([rec(0), rec(1)])
    SpoolDelivery(spool, ScriptedExporter([True, False]), batch_max_records=1).pump()
    spool.close()
    (tmp_path / ACK_FILE).write_text("not json")
    spool = Spool(tmp_path)
    assert spool.pending_records == 2


def test_segments_are_deleted_once_acknowledged(tmp_path):
    size = line_bytes(rec(0))
    spool = Spool(tmp_path, segment_bytes=2 * size)
    for i in range(6):
        spool.append([rec(i)])
    assert len(segments(tmp_path)) == 3
    delivery = SpoolDelivery(spool, ScriptedExporter([True, True, False]), batch_max_records=1)
    assert delivery.pump() == 2
    assert len(segments(tmp_path)) == 2  # the first segment is fully acknowledged
    assert delivery.pump(now=delivery.next_attempt_at) == 4
    assert segments(tmp_path) == []
    assert (tmp_path / ACK_FILE).exists()

    assert spool.append([rec(6)])  # appending goes on in a new segment
    assert len(segments(tmp_path)) == 1
