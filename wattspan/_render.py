"""Terminal tables for people (rich); machine output goes through the JSONL records."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table


def _num(value, fmt: str = "{:,.2f}") -> str:
    return "unknown" if value is None else fmt.format(value)


def to_text(*renderables, width: int = 110) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    for item in renderables:
        console.print(item)
    return buffer.getvalue()


def device_table(result) -> Table:
    title = f"wattspan: {result.name} ({result.duration_s:.2f} s)"
    table = Table(title=title, title_justify="left")
    for column, justify in (("device", "left"), ("energy J", "right"), ("dynamic J", "right"),
                            ("avg W", "right"), ("peak W", "right"), ("quality", "left"),
                            ("source", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for device_id, figure in result.devices.items():
        info = result.device_info[device_id]
        label = device_id if not info.part_of else f"  {device_id} (in {info.part_of})"
        table.add_row(label, _num(figure.energy_j), _num(figure.dynamic_energy_j),
                      _num(figure.avg_power_w, "{:,.1f}"), _num(figure.peak_power_w, "{:,.1f}"),
                      figure.quality.value, info.source)
    table.add_row("total", _num(result.energy_j), _num(result.dynamic_energy_j), "", "",
                  result.quality.value, "", style="bold")
    return table


def step_table(result, limit: int = 20) -> Table | None:
    if not result.steps:
        return None
    table = Table(title="steps", title_justify="left")
    table.add_column("step", justify="right")
    table.add_column("name")
    table.add_column("duration s", justify="right")
    for device_id in result.devices:
        table.add_column(f"{device_id} J", justify="right", overflow="fold")
    table.add_column("quality")
    shown = result.steps if len(result.steps) <= limit else result.steps[:limit // 2] + \
        result.steps[-limit // 2:]
    for step in shown:
        table.add_row(str(step.index), step.name or "", f"{step.duration_s:.3f}",
                      *(_num(step.devices[d].energy_j) for d in result.devices),
                      step.quality.value)
    return table


def render_measurement(result, *, steps: bool = True) -> str:
    parts = [device_table(result)]
    if steps and (table := step_table(result)) is not None:
        parts.append(table)
    # Reasons are plain lines, never wrapped, so each can be grepped whole.
    reasons = "".join(f"{m.collector}: {m.reason}\n" for m in result.unavailable)
    return to_text(*parts) + reasons


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def render_spans(spans: list[dict], device_records: list[dict] | None = None,
                 top: int = 10) -> str:
    """Energy per span name (count, total, per-span percentiles) and the costliest requests."""
    by_name: dict[str, list[dict]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    table = Table(title="energy per span name", title_justify="left")
    for column in ("span", "count", "total J", "mean J", "p50 J", "p95 J", "dynamic J",
                   "quality"):
        table.add_column(column, justify="left" if column in ("span", "quality") else "right")
    from wattspan.collectors.base import Quality

    for name, group in sorted(by_name.items()):
        known = [s["energy_j"] for s in group if s["energy_j"] is not None]
        dynamic = [s["dynamic_energy_j"] for s in group if s["dynamic_energy_j"] is not None]
        quality = Quality.worst(*(Quality(s["quality"]) for s in group)).value
        unknown = len(group) - len(known)
        table.add_row(
            name, f"{len(group):,}" + (f" ({unknown} unknown)" if unknown else ""),
            _num(sum(known) if known else None), _num(sum(known) / len(known) if known else None),
            _num(_percentile(known, 50) if known else None),
            _num(_percentile(known, 95) if known else None),
            _num(sum(dynamic) if dynamic else None), quality)
    parts = [table]
    costly = sorted((s for s in spans if s["energy_j"] is not None),
                    key=lambda s: s["energy_j"], reverse=True)[:top]
    if costly:
        requests = Table(title=f"costliest requests (top {len(costly)})", title_justify="left")
        for column in ("request", "span", "duration s", "energy J", "dynamic J", "quality"):
            requests.add_column(column, justify="right" if column.endswith(("s", "J")) else "left")
        for s in costly:
            requests.add_row(s["request_id"] or s["span_id"], s["name"],
                             f"{s['duration_s']:.3f}", _num(s["energy_j"]),
                             _num(s["dynamic_energy_j"]), s["quality"])
        parts.append(requests)
    return to_text(*parts)
