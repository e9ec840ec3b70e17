"""The ``wattspan`` command line: ``devices``, ``run``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import subprocess
import sys

from wattspan.config import ConfigError, load

_log = logging.getLogger("wattspan")

#: Signals passed on to the measured command. SIGINT is not among them: Ctrl-C in a terminal
#: already reaches the whole foreground process group, and a second copy would cut short the
#: command's own clean-up. It is ignored here while the command runs.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2)


def _settings(args, **overrides):
    return load(getattr(args, "config", None), overrides=overrides)


# --- devices


def cmd_devices(args) -> int:
    from wattspan.agent.discovery import discover

    discovery = discover(_settings(args))
    try:
        if args.json:
            print(json.dumps({
                "devices": [{
                    "device": d.device_id, "kind": d.kind, "name": d.name, "source": d.source,
                    "quality": d.quality.value, "idle_w": d.idle_w, "part_of": d.part_of,
                    "details": d.details,
                } for d in discovery.devices],
                "unavailable": [{"collector": u.collector, "reason": u.reason}
                                for u in discovery.unavailable],
            }, indent=2))
            return 0
        from rich.table import Table

        from wattspan._render import to_text

        table = Table(title="wattspan devices", title_justify="left")
        for column in ("device", "name", "measured by", "quality"):
            table.add_column(column, overflow="fold")
        for d in discovery.devices:
            label = d.device_id if not d.part_of else f"  {d.device_id} (in {d.part_of})"
            table.add_row(label, d.name, d.source, d.quality.value)
        sys.stdout.write(to_text(table) if discovery.devices else "no devices found\n")
        # One line per source that found nothing, never wrapped, so it can be grepped.
        for missing in discovery.unavailable:
            print(f"{missing.collector}: {missing.reason}")
        return 0
    finally:
        discovery.close()


# --- run


def cmd_run(args) -> int:
    from wattspan.measure import measure

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("wattspan run: no command given (usage: wattspan run [options] -- CMD ...)",
              file=sys.stderr)
        return 2
    settings = _settings(args, **{"sampling.interval_ms": args.interval_ms})
    jsonl = None
    if args.jsonl:
        try:
            jsonl = open(args.jsonl, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as err:
            print(f"wattspan run: cannot open {args.jsonl}: {err}", file=sys.stderr)
            return 2

    m = measure(" ".join(command), settings=settings)
    m.start()
    returncode = _run_child(command)
    result = m.stop()
    sys.stderr.write(result.table())
    if jsonl is not None:
        with jsonl:
            host = socket.gethostname()
            for record in result.device_records(host=host):
                jsonl.write(json.dumps(record) + "\n")
    return returncode


def _run_child(command: list[str]) -> int:
    """Run the command, forwarding signals; return its exit code (128+N if killed by N)."""
    try:
        child = subprocess.Popen(command)
    except OSError as err:
        print(f"wattspan run: cannot start {command[0]}: {err.strerror}", file=sys.stderr)
        return 127 if isinstance(err, FileNotFoundError) else 126

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


# --- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattspan",
        description="Energy per request and per training step, on GPUs, Neuron devices and CPUs.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("devices", help="list the devices found and how each is measured")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", help="TOML configuration file")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("run", help="run a command and report the energy it used",
                       usage="wattspan run [--interval-ms N] [--jsonl PATH] -- CMD [ARGS...]")
    p.add_argument("--interval-ms", type=float, help="sampling period (default 5)")
    p.add_argument("--jsonl", help="append the device records to this JSONL file")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=level, format="wattspan: %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"wattspan: configuration error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
