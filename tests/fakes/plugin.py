"""pytest fixtures that put the fake NVML library in front of the real code paths."""

from __future__ import annotations

import pytest

from .nvml_scenario import SCENARIO_ENV, Scenario, build_fake_nvml


@pytest.fixture(scope="session")
def fake_nvml_library(tmp_path_factory):
    """Path of the fake ``libnvidia-ml.so.1``, compiled once per session."""
    return build_fake_nvml(tmp_path_factory.mktemp("fake-nvml"))


@pytest.fixture
def fake_gpus(fake_nvml_library, tmp_path, monkeypatch):
    """Install a scenario: ``fake_gpus(Scenario(...))`` points NVML at the fake library and
    the scenario (through the environment, so child processes see them too)."""

    def install(scenario: Scenario) -> Scenario:
        path = scenario.write(tmp_path / "nvml-scenario.txt")
        monkeypatch.setenv(SCENARIO_ENV, str(path))
        monkeypatch.setenv("WATTSPAN_NVML_LIBRARY", str(fake_nvml_library))
        return scenario

    return install


@pytest.fixture
def no_nvml(monkeypatch, tmp_path):
    """An NVML library path that does not exist, as on a host without the NVIDIA driver."""
    monkeypatch.setenv("WATTSPAN_NVML_LIBRARY", str(tmp_path / "absent" / "libnvidia-ml.so.1"))
