"""Fixtures of the test suite (the native-implementation fixtures are in the root conftest)."""

# Fixtures for the fake hardware (fake NVML library and scenarios).
pytest_plugins = ["fakes.plugin"]
