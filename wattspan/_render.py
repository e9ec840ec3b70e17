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
