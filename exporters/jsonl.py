"""Records as JSON Lines: one record per line, appended to a file (or a stream)."""

from __future__ import annotations

import json
import logging
import os
from typing import TextIO

_log = logging.getLogger(__name__)


class JsonlExporter:
    """Appends records to ``path``, opening it per batch so rotation by other tools works.

    A batch that cannot be written (a full disk, a removed directory) returns False and
    leaves the caller to keep it for the next try.
    """

    name = "jsonl"

    def __init__(self, path: str | os.PathLike | None = None, stream: TextIO | None = None):
        if (path is None) == (stream is None):
            raise ValueError("give exactly one of path or stream")
        self.path = path
        self.stream = stream

    def export(self, records: list[dict]) -> bool:
        if not records:
            return True
        text = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n"
                       for r in records)
        if self.stream is not None:
            self.stream.write(text)
            self.stream.flush()
            return True
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(text)
            out.flush()
        return True

    def shutdown(self) -> None:
        if self.stream is not None:
            self.stream.flush()
