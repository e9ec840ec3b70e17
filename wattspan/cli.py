"""The ``wattspan`` command line: ``devices``, ``run``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

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
    import tempfile

    from wattspan.agent.service import Agent, AgentOptions
    from wattspan.exporters.jsonl import JsonlExporter
    from wattspan.exporters.memory import MemoryExporter
    from wattspan.measure import measure

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("wattspan run: no command given (usage: wattspan run [options] -- CMD ...)",
              file=sys.stderr)
        return 2
    settings = _settings(args, **{"sampling.interval_ms": args.interval_ms})
    exporters = [MemoryExporter()]
    if args.jsonl:
        try:
            open(args.jsonl, "a").close()
        except OSError as err:
            print(f"wattspan run: cannot write {args.jsonl}: {err}", file=sys.stderr)
            return 2
        exporters.append(_SpansOnly(JsonlExporter(args.jsonl)))

    m = measure(" ".join(command), settings=settings)
    m.start()
    # The command's spans go to an agent embedded here, on a socket only this user reaches.
    with tempfile.TemporaryDirectory(prefix="wattspan-run-") as private:
        endpoint = f"ipc://{private}/spans/spans.sock"
        agent = Agent(settings, AgentOptions(endpoint=endpoint), exporters, host=m.host)
        agent.start()
        try:
            returncode = _run_child(command, {**os.environ, "WATTSPAN_ENDPOINT": endpoint})
        finally:
            agent.stop()
            result = m.stop()
    memory = exporters[0]
    spans = memory.of_type("span")
    from wattspan._render import render_spans

    sys.stderr.write(result.table())
    if spans:
        sys.stderr.write(render_spans(spans, memory.of_type("device")))
    if args.jsonl:
        attributed: dict[str, float] = {}
        for span in spans:
            for device_id, share in span["devices"].items():
                if share["energy_j"] is not None:
                    attributed[device_id] = attributed.get(device_id, 0.0) + share["energy_j"]
        records = result.device_records(host=socket.gethostname(), attributed_j=attributed)
        try:
            exporters[1].inner.export(records)
        except OSError as err:
            print(f"wattspan run: cannot write {args.jsonl}: {err}", file=sys.stderr)
    return returncode


class _SpansOnly:
    """Passes span records on; device totals for the whole command are written at the end."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name

    def export(self, records: list[dict]) -> bool:
        return self.inner.export([r for r in records if r["type"] == "span"])

    def shutdown(self) -> None:
        self.inner.shutdown()


def _run_child(command: list[str], env: dict[str, str]) -> int:
    """Run the command, forwarding signals; return its exit code (128+N if killed by N)."""
    try:
        child = subprocess.Popen(command, env=env)
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


# --- agent


def cmd_agent(args) -> int:
    from wattspan import protocol
    from wattspan.agent.ingest import EndpointError
    from wattspan.agent.service import Agent, AgentOptions
    from wattspan.exporters.jsonl import JsonlExporter

    settings = _settings(args, **{"sampling.interval_ms": args.interval_ms})
    endpoint = args.endpoint or protocol.default_endpoint()
    exporters = [JsonlExporter(args.jsonl) if args.jsonl else JsonlExporter(stream=sys.stdout)]
    options = AgentOptions(endpoint=endpoint, allow_remote=args.allow_remote,
                           socket_group=args.socket_group,
                           report_interval_s=args.report_interval_s)
    agent = Agent(settings, options, exporters)
    try:
        agent.start()
    except EndpointError as err:
        print(f"wattspan agent: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    devices = ", ".join(d.device_id for d in agent.host.devices) or "none"
    print(f"wattspan agent: listening on {endpoint}; measuring {devices}", file=sys.stderr)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        agent.stop()
    stats = agent.table.stats
    print(f"wattspan agent: stopped; {agent.spans_exported} spans exported, "
          f"{stats.malformed} malformed messages, {stats.orphan_ends} orphan ends",
          file=sys.stderr)
    return 0


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
    p = sub.add_parser("agent", help="run the sidecar that attributes energy to spans")
    p.add_argument("--endpoint", help="ipc://PATH or tcp://HOST:PORT (default: "
                   "$WATTSPAN_ENDPOINT, else a Unix socket under the runtime directory)")
    p.add_argument("--jsonl", help="append records to this file (default: standard output)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a TCP endpoint on a non-loopback address")
    p.add_argument("--socket-group", help="group allowed to send spans on the Unix socket")
    p.add_argument("--report-interval-s", type=float, default=10.0,
                   help="time covered by each device record (default 10)")
    p.add_argument("--interval-ms", type=float, help="sampling period (default 5)")
    p.add_argument("--config", help="TOML configuration file")
    p.set_defaults(func=cmd_agent)
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
