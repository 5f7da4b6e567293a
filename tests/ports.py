"""Free loopback ports for the servers tests start (fitgate, PostgreSQL, Prometheus), one owner for the rule.

A port is free when chosen and bound by its server a moment later. Under pytest-xdist another worker could take it
in between, so each worker draws from its own slice of 20000-31999: two workers never race for one port. The range
lies below Linux's ephemeral ports (32768 and up), which outgoing connections and ``bind(("", 0))`` use, so no
client socket takes a chosen port either. Within a worker tests run one at a time, and a server still running keeps
its port bound, so the bind check below skips it.
"""

from __future__ import annotations

import os
import random
import socket

FIRST, LAST = 20000, 31999
_draw = random.Random()  # its own generator: tests that seed the global one draw the same numbers as before


def _slice() -> range:
    """This xdist worker's ports; all of them without xdist."""
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = (LAST - FIRST + 1) // count
    return range(FIRST + index * size, FIRST + (index + 1) * size)


def free_port() -> int:
    """A loopback port free now, and one no other xdist worker of this session will choose."""
    ports = _slice()
    for port in _draw.sample(ports, min(200, len(ports))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {ports.start}-{ports.stop - 1} after 200 tries")
