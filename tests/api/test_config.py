"""Configuration precedence and validation."""

import pytest

from wattspan.config import ConfigError, load


def write(tmp_path, text):
    path = tmp_path / "wattspan.toml"
    path.write_text(text)
    return path


def test_defaults():
    settings = load(environ={})
    assert settings.interval_ms == 5.0
    assert settings.get("paths", "procfs_root") == "/proc"
    assert settings.get("collectors", "enabled") is None


def test_precedence_flag_over_env_over_file(tmp_path):
    path = write(tmp_path, "[sampling]\ninterval_ms = 50\n")
    assert load(path, environ={}).interval_ms == 50.0
    assert load(path, environ={"WATTSPAN_INTERVAL_MS": "20"}).interval_ms == 20.0
    settings = load(path, environ={"WATTSPAN_INTERVAL_MS": "20"},
                    overrides={"sampling.interval_ms": 5})
    assert settings.interval_ms == 5.0


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "[nvml]\nlibrary = '/opt/lib/libnvidia-ml.so.1'\n")
    settings = load(environ={"WATTSPAN_CONFIG": str(path)})
    assert settings.get("nvml", "library") == "/opt/lib/libnvidia-ml.so.1"


def test_misspelled_key_is_rejected_with_a_suggestion(tmp_path):
    path = write(tmp_path, "[sampling]\ninterval_sm = 50\n")
    with pytest.raises(ConfigError, match=r"unknown key sampling.interval_sm.*'interval_ms'"):
        load(path, environ={})


def test_misspelled_section_is_rejected(tmp_path):
    path = write(tmp_path, "[sampler]\ninterval_ms = 50\n")
    with pytest.raises(ConfigError, match=r"unknown section \[sampler\].*'sampling'"):
        load(path, environ={})


def test_misspelled_environment_variable_is_rejected():
    with pytest.raises(ConfigError, match="WATTSPAN_INTERVALMS.*WATTSPAN_INTERVAL_MS"):
        load(environ={"WATTSPAN_INTERVALMS": "10"})


@pytest.mark.parametrize("text, message", [
    ("[sampling]\ninterval_ms = 'fast'\n", "interval_ms"),
    ("[sampling]\ninterval_ms = 0.5\n", "at least 1 ms"),
    ("[sampling]\nring_capacity = -3\n", "must be positive"),
    ("[cpu_model]\nmin_w_per_vcpu = 2.0\n", "set together"),
    ("[cpu_model]\nmin_w_per_vcpu = 2.0\nmax_w_per_vcpu = 1.0\n", "exceeds"),
    ("[idle_w]\n'gpu:GPU-1' = 'sixty'\n", "gpu:GPU-1"),
    ("[sampling\n", "not valid TOML"),
])
def test_bad_values_are_rejected(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text), environ={})


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load("/nonexistent/wattspan.toml", environ={})


def test_idle_overrides_and_collector_list(tmp_path):
    path = write(tmp_path, "[idle_w]\n'gpu:GPU-1' = 61.5\n[collectors]\nenabled = ['nvml']\n")
    settings = load(path, environ={"WATTSPAN_COLLECTORS": "nvml, cpu_model"})
    assert settings.idle_w == {"gpu:GPU-1": 61.5}
    assert settings.get("collectors", "enabled") == ["nvml", "cpu_model"]
