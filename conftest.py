"""Fixtures shared by the tests and the benchmarks: each native implementation in turn."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

import wattspan.native as native

# CI sets this: there the compiled kernels must have been built, so a missing one fails.
REQUIRE_NATIVE_ENV = "WATTSPAN_REQUIRE_NATIVE"


def _native_module(name: str) -> ModuleType:
    """Implementation module ``name`` of ``wattspan.native``, or skip (or fail, where the
    compiled one is required) when it cannot be loaded here."""
    try:
        return native._load(name)
    except ImportError as err:
        reason = f"{name} implementation of wattspan.native not available: {err}"
    if name == "cython" and os.environ.get(REQUIRE_NATIVE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_NATIVE_ENV}=1; build it with "
                    "`pip install -e . --no-build-isolation`)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(params=native.IMPLEMENTATIONS, ids=native.IMPLEMENTATIONS)
def native_impl(request):
    """``wattspan.native`` bound to each implementation in turn ("cython", "python").

    Every implementation is a parameter, loadable or not, so that a missing compiled module
    shows up: skipped with its reason, or failed when ``WATTSPAN_REQUIRE_NATIVE=1``.
    """
    name = request.param
    _native_module(name)
    previous = native.IMPLEMENTATION
    native.use(name)
    try:
        yield native
    finally:
        native.use(previous)


@pytest.fixture(scope="session")
def native_twins() -> tuple[ModuleType, ModuleType]:
    """``(compiled, pure-Python)`` implementation modules, for parity tests (same skip/fail
    rule as ``native_impl`` for the compiled one)."""
    return _native_module("cython"), _native_module("python")


@pytest.fixture(params=native.IMPLEMENTATIONS, ids=native.IMPLEMENTATIONS)
def native_module(request) -> ModuleType:
    """Each implementation module of ``wattspan.native`` in turn, without switching."""
    return _native_module(request.param)
