"""Native kernels, compiled with Cython, with a pure-Python twin of the same interface.

The compiled module is used when it was built and ``WATTSPAN_PURE_PYTHON`` is not ``1``.
Callers use the names through this module (``native.ReadingRing``), never by importing them
directly, so one switch (``use``) changes the implementation everywhere, as the tests do.
"""

from __future__ import annotations

import logging
import os
import platform
from types import ModuleType

PUBLIC_API = (
    "ReadingRing",
    "energy_at",
    "breakpoints_ns",
    "METHOD_NONE",
    "METHOD_COUNTER",
    "METHOD_POWER",
    "METHOD_CLAMPED",
)

_log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("cython", "python")


def _load(name: str) -> ModuleType:
    if name == "cython":
        from wattspan.native import _series_c as module
    elif name == "python":
        from wattspan.native import _series_py as module
    else:
        raise ValueError(
            f"unknown native implementation {name!r}; expected one of {IMPLEMENTATIONS}")
    missing = [n for n in PUBLIC_API if not hasattr(module, n)]
    if missing:
        raise ImportError(f"{module.__name__} lacks {', '.join(missing)}")
    return module


def available() -> list[str]:
    """The implementations that can be loaded here."""
    found = []
    for name in IMPLEMENTATIONS:
        try:
            _load(name)
        except ImportError:
            continue
        found.append(name)
    return found


def use(name: str) -> None:
    """Bind the public names to implementation ``name`` (``"cython"`` or ``"python"``)."""
    global IMPLEMENTATION
    module = _load(name)
    for attr in PUBLIC_API:
        globals()[attr] = getattr(module, attr)
    IMPLEMENTATION = name


def _default() -> str:
    if os.environ.get("WATTSPAN_PURE_PYTHON") == "1":
        return "python"
    if platform.python_implementation() != "CPython":
        return "python"
    try:
        _load("cython")
    except ImportError as err:
        _log.info("native extension unavailable (%s); using the pure-Python twin", err)
        return "python"
    return "cython"


IMPLEMENTATION = ""
use(_default())
