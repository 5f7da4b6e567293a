"""Free loopback ports for the servers tests start (fitgate, PostgreSQL, Prometheus), one owner for the rule.

A port is free when chosen and bound by the server a moment later. Under pytest-xdist another worker could take it
in between, so each worker chooses only ports that are its own modulo the number of workers: two workers never
race for one port. Within a worker, tests run one at a time, and a server still running keeps its port bound.
"""

from __future__ import annotations

import os
import socket


def _worker() -> tuple[int, int]:
    """This xdist worker's index and the number of workers; (0, 1) without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw")), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def free_port() -> int:
    """A loopback port free now, and one no other xdist worker of this session will choose."""
    index, count = _worker()
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port % count == index:
            return port
    raise RuntimeError("no free loopback port for this worker in 1000 tries")
