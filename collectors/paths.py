"""Filesystem roots, injectable so tests can point collectors at fixture trees."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Roots:
    procfs: Path = Path("/proc")
    sysfs: Path = Path("/sys")

    @classmethod
    def from_env(cls) -> Roots:
        return cls(
            procfs=Path(os.environ.get("WATTSPAN_PROCFS_ROOT", "/proc")),
            sysfs=Path(os.environ.get("WATTSPAN_SYSFS_ROOT", "/sys")),
        )

    def proc(self, *parts: str) -> Path:
        return self.procfs.joinpath(*parts)

    def sys(self, *parts: str) -> Path:
        return self.sysfs.joinpath(*parts)
