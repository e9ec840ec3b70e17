"""Records kept in memory: for tests and for summaries printed by ``wattspan run``."""

from __future__ import annotations

import threading


class MemoryExporter:
    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[dict] = []

    def export(self, records: list[dict]) -> bool:
        with self._lock:
            self.records.extend(records)
        return True

    def of_type(self, kind: str) -> list[dict]:
        with self._lock:
            return [r for r in self.records if r.get("type") == kind]

    def shutdown(self) -> None:
        pass
