"""A small service to measure: ``wattspan run -- python -m wattspan.demo``.

It serves a burst of concurrent "requests", each doing real CPU work (hashing a
request-sized amount of data, with the GIL released), and marks each with
``wattspan.span`` the way a model server would, with the bytes processed as the weight.
Under ``wattspan run`` the summary lists the energy of every request and of each span name.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from concurrent.futures import ThreadPoolExecutor

import wattspan

BLOCK = b"\x5a" * (1 << 20)


def handle(request_id: str, megabytes: int) -> str:
    """One request: hash ``megabytes`` MB (hashlib releases the GIL, so requests overlap)."""
    with wattspan.span("hash", request_id=request_id) as span:
        digest = hashlib.sha256()
        for _ in range(megabytes):
            digest.update(BLOCK)
        span.weight = megabytes
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wattspan.demo", description=__doc__)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    sizes = [rng.choice((64, 128, 256, 512)) for _ in range(args.requests)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        list(pool.map(handle, [f"req-{i:03d}" for i in range(args.requests)], sizes))
    with wattspan.span("idle-wait"):
        time.sleep(0.3)
    elapsed = time.monotonic() - started
    print(f"served {args.requests} requests ({sum(sizes):,} MB hashed) with "
          f"{args.concurrency} workers in {elapsed:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
