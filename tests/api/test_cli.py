"""``wattspan devices`` and ``wattspan run`` as a user runs them: in a subprocess, against the
fake GPU and the fixture trees."""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes.nvml_scenario import Gpu, Scenario, Segment

from wattspan import cli
from wattspan.collectors import REGISTRY, CollectorSpec, load_builtin_collectors

FIXTURES = Path(__file__).parent.parent / "fixtures"


def wattspan(*args, env=None, timeout=60, impl="python", **kw):
    """Run the CLI in a child process with the chosen native implementation."""
    full_env = dict(os.environ if env is None else env)
    full_env["WATTSPAN_PURE_PYTHON"] = "1" if impl == "python" else "0"
    return subprocess.run([sys.executable, "-m", "wattspan", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def mono_from_unix(unix_ns: int) -> int:
    return unix_ns - (time.time_ns() - time.monotonic_ns())


def records(path: Path) -> dict[str, dict]:
    return {r["device"]: r for r in map(json.loads, path.read_text().splitlines())}


def env_without_nvml():
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTSPAN_")}
    env["LD_LIBRARY_PATH"] = ""
    return env


# --- devices


def test_devices_without_nvml_says_so_in_one_line_and_still_measures_the_cpu():
    result = wattspan("devices", env=env_without_nvml())
    assert result.returncode == 0, result.stderr
    nvml_lines = [line for line in result.stdout.splitlines() if line.startswith("nvml:")]
    if not nvml_lines:
        pytest.skip("a real NVIDIA driver is installed here")
    assert len(nvml_lines) == 1
    assert "no NVIDIA driver" in nvml_lines[0]
    assert "cpu:0" in result.stdout


def test_devices_json_with_fake_gpus_and_rapl(fake_gpus, monkeypatch):
    fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-aaaa"), Gpu.a100(uuid="GPU-bbbb")]))
    monkeypatch.setenv("WATTSPAN_SYSFS_ROOT", str(FIXTURES / "sys" / "rapl-intel"))
    result = wattspan("devices", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    by_id = {d["device"]: d for d in report["devices"]}
    assert by_id["gpu:GPU-aaaa"]["quality"] == "measured"
    assert by_id["gpu:GPU-bbbb"]["name"].startswith("NVIDIA A100")
    assert by_id["cpu:0"]["source"].startswith("rapl")
    assert by_id["cpu:0:core"]["part_of"] == "cpu:0"
    reasons = {u["collector"]: u["reason"] for u in report["unavailable"]}
    assert "rapl" in reasons["cpu_model"]  # the model stands down when RAPL measures


def test_devices_falls_back_to_the_model_when_rapl_is_unreadable(monkeypatch, capsys):
    """energy_uj readable by root only: the sampler runs as root here, for whom chmod changes
    nothing, so the permission error is injected at the collector's open."""
    from wattspan.collectors.rapl import RaplCollector

    def deny(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    load_builtin_collectors()
    spec = REGISTRY["rapl"]
    monkeypatch.setitem(REGISTRY, "rapl", CollectorSpec(
        "rapl", functools.partial(RaplCollector, opener=deny), True))
    monkeypatch.setenv("WATTSPAN_SYSFS_ROOT", str(FIXTURES / "sys" / "rapl-intel"))
    monkeypatch.setenv("WATTSPAN_PROCFS_ROOT", str(FIXTURES / "proc" / "graviton3"))
    monkeypatch.setenv("WATTSPAN_COLLECTORS", "rapl,cpu_model")
    assert cli.main(["devices"]) == 0
    out = capsys.readouterr().out
    rapl_lines = [line for line in out.splitlines() if line.startswith("rapl:")]
    assert len(rapl_lines) == 1 and "root" in rapl_lines[0]
    assert "cpu:0" in out and "estimated" in out and "graviton3" in out
    del spec


# --- run


@pytest.mark.slow
def test_run_reports_each_gpu_within_half_a_percent(native_impl, fake_gpus, tmp_path):
    sc = fake_gpus(Scenario(gpus=[
        Gpu.h100(uuid="GPU-0", idle_w=60, segments=[
            Segment(900, 2100, 150), Segment(2100, 3300, 400), Segment(3600, 5200, 260)]),
        Gpu.h100(uuid="GPU-1", idle_w=60, counter_phase_ms=40, instant_phase_ms=70, segments=[
            Segment(500, 1500, 380), Segment(1500, 4500, 200), Segment(4500, 6500, 310)]),
    ]))
    out = tmp_path / "run.jsonl"
    result = wattspan("run", "--jsonl", str(out), "--", sys.executable, "-c",
                      "import time; time.sleep(5)", impl=native_impl.IMPLEMENTATION)
    assert result.returncode == 0, result.stderr
    found = records(out)
    for index, uuid in enumerate(("GPU-0", "GPU-1")):
        record = found[f"gpu:{uuid}"]
        assert record["quality"] == "measured"
        a, b = mono_from_unix(record["start_unix_ns"]), mono_from_unix(record["end_unix_ns"])
        assert 5.0 < (b - a) / 1e9 < 7.0
        true = sc.true_energy_j(index, a, b)
        assert abs(record["energy_j"] - true) / true < 0.005, (uuid, record, true)
    assert found["cpu:0"]["energy_j"] > 0
    assert "gpu:GPU-0" in result.stderr and "measured" in result.stderr


@pytest.mark.slow
def test_run_survives_a_lost_gpu(fake_gpus, tmp_path):
    # The GPU falls off the bus 4 s after the scenario starts (time enough for the run to
    # start on a loaded machine); the command runs until 1 s after that.
    sc = fake_gpus(Scenario(gpus=[
        Gpu.h100(uuid="GPU-ok", segments=[Segment(0, 10_000, 250)]),
        Gpu.h100(uuid="GPU-gone", lost_at_ms=4000, segments=[Segment(0, 10_000, 300)]),
    ]))
    until_ns = sc.monotonic_ns(5000)
    out = tmp_path / "run.jsonl"
    sleep = f"import time; time.sleep(max(0.2, ({until_ns} - time.monotonic_ns()) / 1e9))"
    result = wattspan("run", "--jsonl", str(out), "--", sys.executable, "-c", sleep)
    assert result.returncode == 0, result.stderr
    found = records(out)
    assert mono_from_unix(found["gpu:GPU-gone"]["start_unix_ns"]) < sc.monotonic_ns(4000)
    assert found["gpu:GPU-gone"]["quality"] == "partial"
    assert 0 < found["gpu:GPU-gone"]["coverage"] < 1
    ok = found["gpu:GPU-ok"]
    assert ok["quality"] == "measured"
    a, b = mono_from_unix(ok["start_unix_ns"]), mono_from_unix(ok["end_unix_ns"])
    assert abs(ok["energy_j"] - sc.true_energy_j(0, a, b)) / ok["energy_j"] < 0.005
    assert found["cpu:0"]["quality"] == "estimated"
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "GPU-gone" in warnings[0] and "lost" in warnings[0]


def test_run_demo_prints_estimated_cpu_energy_per_device_and_request():
    result = wattspan("run", "--", sys.executable, "-m", "wattspan.demo", "--requests", "6",
                      "--concurrency", "3", env=env_without_nvml())
    assert result.returncode == 0, result.stderr
    assert "served 6 requests" in result.stdout
    cpu_rows = [line for line in result.stderr.splitlines() if line.strip("│ ").startswith("cpu:0")]
    assert cpu_rows and "estimated" in cpu_rows[0]
    energy = float(cpu_rows[0].split("│")[2].replace(",", ""))
    assert energy > 0
    assert "energy per span name" in result.stderr
    hash_row = next(line for line in result.stderr.splitlines() if line.startswith("│ hash"))
    assert hash_row.split("│")[2].strip() == "6"
    assert "req-00" in result.stderr


def test_run_passes_the_exit_code_through():
    result = wattspan("run", "--", sys.executable, "-c", "import sys; sys.exit(3)",
                      env=env_without_nvml())
    assert result.returncode == 3
    assert "energy J" in result.stderr


def test_run_reports_death_by_signal_like_a_shell():
    result = wattspan("run", "--", sys.executable, "-c",
                      "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
                      env=env_without_nvml())
    assert result.returncode == 128 + signal.SIGKILL


def test_run_forwards_sigterm_to_the_command(tmp_path):
    marker = tmp_path / "got-term"
    script = (
        "import signal, sys, time, pathlib\n"
        f"def bye(*_): pathlib.Path({str(marker)!r}).write_text('yes'); sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    env = env_without_nvml()
    env["WATTSPAN_PURE_PYTHON"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "wattspan", "run", "--", sys.executable,
                             "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 7
    assert marker.read_text() == "yes"
    assert "energy J" in stderr


def test_run_without_a_command_is_a_usage_error():
    result = wattspan("run", env=env_without_nvml())
    assert result.returncode == 2
    assert "no command given" in result.stderr


def test_run_with_a_missing_program_exits_127():
    result = wattspan("run", "--", "/nonexistent/program", env=env_without_nvml())
    assert result.returncode == 127
    assert "cannot start" in result.stderr


def test_misspelled_configuration_is_a_clear_error(tmp_path):
    config = tmp_path / "w.toml"
    config.write_text("[sampling]\ninterval = 5\n")
    result = wattspan("devices", "--config", str(config), env=env_without_nvml())
    assert result.returncode == 2
    assert "unknown key sampling.interval" in result.stderr
    assert "Traceback" not in result.stderr
