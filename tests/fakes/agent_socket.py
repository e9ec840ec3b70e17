"""A PULL socket bound like the agent's, decoding what the client sends: the stand-in agent
of the client and integration tests."""

from __future__ import annotations

import time

import zmq

from wattspan.protocol import Begin, End, decode_frame


class AgentSocket:
    """A PULL socket bound like the agent's, decoding what arrives."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.frames = 0

    def recv(self, n: int, timeout: float = 5.0) -> list[Begin | End]:
        """Exactly ``n`` messages (fails on fewer within ``timeout``, or more right after)."""
        out: list[Begin | End] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self.sock.poll(left_ms):
                break
            out += decode_frame(self.sock.recv())
            self.frames += 1
        assert len(out) == n, f"received {len(out)} of {n} messages: {out}"
        self.nothing(0.01)
        return out

    def nothing(self, timeout: float = 0.05) -> None:
        if self.sock.poll(int(timeout * 1000)):
            extra = decode_frame(self.sock.recv())
            raise AssertionError(f"unexpected messages: {extra}")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
