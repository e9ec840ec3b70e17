"""Configuration: flags > ``WATTSPAN_*`` environment variables > a TOML file > defaults.

Every key is declared once in ``SCHEMA`` with its type, default and meaning; anything else is
an error that names the closest valid key, so a misspelling never passes silently.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib


class ConfigError(ValueError):
    """Invalid configuration; the message says which key and why."""


@dataclass(frozen=True)
class Key:
    type: type
    default: Any
    env: str | None
    doc: str


# section -> key -> declaration
SCHEMA: dict[str, dict[str, Key]] = {
    "sampling": {
        # A counter step is dated to within half a period; 5 ms keeps 200 ms steps within a
        # few percent next to large power swings (see tests/agent/test_timeline.py).
        "interval_ms": Key(float, 5.0, "WATTSPAN_INTERVAL_MS",
                           "Period of the sampler, in milliseconds."),
        "ring_capacity": Key(int, 60_000, None, "Readings kept per device (fixed memory)."),
        "max_lateness_ms": Key(float, 1000.0, None,
                               "How long to wait for readings past an interval's end before "
                               "reporting it with what exists (marked partial)."),
    },
    "paths": {
        "procfs_root": Key(str, "/proc", "WATTSPAN_PROCFS_ROOT", "Root of procfs."),
        "sysfs_root": Key(str, "/sys", "WATTSPAN_SYSFS_ROOT", "Root of sysfs."),
    },
    "collectors": {
        "enabled": Key(list, None, "WATTSPAN_COLLECTORS",
                       "Collector names to run (comma-separated in the environment); "
                       "default: every collector that is on by default."),
    },
    "nvml": {
        "library": Key(str, "libnvidia-ml.so.1", "WATTSPAN_NVML_LIBRARY",
                       "NVML shared library: a soname or a path."),
        "retry_lost_s": Key(float, 5.0, None, "Seconds between look-ups of a lost GPU."),
    },
    "cpu_model": {
        "min_w_per_vcpu": Key(float, None, None,
                              "Power of one idle vCPU, in watts (overrides the table)."),
        "max_w_per_vcpu": Key(float, None, None,
                              "Power of one fully busy vCPU, in watts (overrides the table)."),
    },
    "idle_w": {},  # device id -> idle baseline in watts; free-form keys, validated as numbers
}

FREE_FORM_SECTIONS = {"idle_w"}

#: Environment variables read elsewhere, so that they are not reported as unknown.
OTHER_ENV = {"WATTSPAN_CONFIG", "WATTSPAN_PURE_PYTHON", "WATTSPAN_ENDPOINT",
             "WATTSPAN_REQUIRE_NATIVE", "WATTSPAN_FAKE_NVML_SCENARIO"}


@dataclass(frozen=True)
class Settings:
    """Validated settings; ``values[section][key]``."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "defaults"

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    @property
    def interval_ms(self) -> float:
        return self.get("sampling", "interval_ms")

    @property
    def idle_w(self) -> dict[str, float]:
        return self.values.get("idle_w", {})


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(where: str, key: Key, value: Any) -> Any:
    if value is None:
        return None
    try:
        if key.type is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            raise TypeError("expected a list of strings")
        if key.type is float:
            if isinstance(value, bool):
                raise TypeError("expected a number")
            out = float(value)
            if out != out or out < 0:
                raise ValueError("must be a non-negative number")
            return out
        if key.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError("expected an integer")
            out = int(value)
            if out <= 0:
                raise ValueError("must be positive")
            return out
        if key.type is str:
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err} (got {value!r})") from None
    raise ConfigError(f"{where}: unsupported type")


def load(path: str | os.PathLike | None = None, *, overrides: dict | None = None,
         environ: dict[str, str] | None = None) -> Settings:
    """Build settings from defaults, a TOML file, the environment and ``overrides``.

    ``path`` defaults to ``$WATTSPAN_CONFIG`` when set. ``overrides`` holds flag values as
    ``{"section.key": value}``; None values are ignored.
    """
    env = os.environ if environ is None else environ
    values = {s: {k: d.default for k, d in keys.items()} for s, keys in SCHEMA.items()}
    sources = ["defaults"]

    path = path or env.get("WATTSPAN_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
        for section, table in data.items():
            if section not in SCHEMA:
                raise ConfigError(f"{path}: unknown section [{section}]{_suggest(section, SCHEMA)}")
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: [{section}] must be a table")
            for key, value in table.items():
                where = f"{path}: {section}.{key}"
                if section in FREE_FORM_SECTIONS:
                    values[section][key] = _coerce(where, Key(float, None, None, ""), value)
                    continue
                if key not in SCHEMA[section]:
                    raise ConfigError(f"{path}: unknown key {section}.{key}"
                                      f"{_suggest(key, SCHEMA[section])}")
                values[section][key] = _coerce(where, SCHEMA[section][key], value)
        sources.append(str(path))

    known_env = {d.env: (s, k) for s, keys in SCHEMA.items() for k, d in keys.items() if d.env}
    for name, raw in env.items():
        if not name.startswith("WATTSPAN_"):
            continue
        if name in known_env:
            section, key = known_env[name]
            values[section][key] = _coerce(name, SCHEMA[section][key], raw)
            sources.append(name)
        elif name not in OTHER_ENV:
            raise ConfigError(f"unknown environment variable {name}"
                              f"{_suggest(name, [*known_env, *OTHER_ENV])}")

    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        values[section][key] = _coerce(f"--{key.replace('_', '-')}", SCHEMA[section][key], value)

    if values["sampling"]["interval_ms"] < 1.0:
        raise ConfigError("sampling.interval_ms must be at least 1 ms")
    lo, hi = values["cpu_model"]["min_w_per_vcpu"], values["cpu_model"]["max_w_per_vcpu"]
    if (lo is None) != (hi is None):
        raise ConfigError("cpu_model.min_w_per_vcpu and max_w_per_vcpu must be set together")
    if lo is not None and lo > hi:
        raise ConfigError(f"cpu_model.min_w_per_vcpu ({lo}) exceeds max_w_per_vcpu ({hi})")
    return Settings(values, " < ".join(sources))
