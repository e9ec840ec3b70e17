"""The exporter contract: exporters only export.

The agent decides when to export and with what; an exporter writes a batch of records
somewhere and says whether it succeeded. Exceptions are the agent's to catch.
"""

from __future__ import annotations

from typing import Protocol


class Exporter(Protocol):
    name: str

    def export(self, records: list[dict]) -> bool:
        """Write ``records``; False (or an exception) means nothing was acknowledged."""

    def shutdown(self) -> None: ...
