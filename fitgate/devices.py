"""What this machine lends the process: CUDA devices, asked of the driver directly (no torch), and CPUs.

The API process must refuse ``device: cuda`` at submit time on a server without a GPU, and it
must stay torch-free (an inference replica's memory and start-up time). The CUDA driver
library answers the same question torch's ``cuda.is_available()`` asks it, in microseconds.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from pathlib import Path

CUDA_SUCCESS = 0


@functools.cache
def cuda_device_count() -> int:
    """CUDA devices visible to this process (``CUDA_VISIBLE_DEVICES`` applies); 0 without a driver."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != CUDA_SUCCESS or driver.cuDeviceGetCount(ctypes.byref(count)) != CUDA_SUCCESS:
        return 0
    return count.value


@functools.cache
def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a Kubernetes limit).

    Both torch and ONNX Runtime count the node's cores, so a pod limited to 2 CPUs on a 64-core node
    would start 64 threads that fight over 2 CPUs' worth of time.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))
