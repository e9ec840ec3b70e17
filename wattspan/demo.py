"""A small workload to measure: ``wattspan run -- python -m wattspan.demo``.

It does real CPU work (hashing) in steps, with short idle pauses between them, so the energy
report has something to show on any machine, GPU or not.
"""

from __future__ import annotations

import argparse
import hashlib
import time


def busy(seconds: float) -> int:
    """Hash for ``seconds``; returns the bytes hashed."""
    block = b"\x5a" * (1 << 20)
    digest = hashlib.sha256()
    hashed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        digest.update(block)
        hashed += len(block)
    return hashed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wattspan.demo", description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument("--pause-seconds", type=float, default=0.25)
    args = parser.parse_args(argv)
    for step in range(1, args.steps + 1):
        hashed = busy(args.step_seconds)
        print(f"step {step}/{args.steps}: hashed {hashed / 1e6:,.0f} MB in "
              f"{args.step_seconds:.2f} s", flush=True)
        time.sleep(args.pause_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
