"""Whether this machine has a CUDA device, asked of the driver directly (no torch).

The API process must refuse ``device: cuda`` at submit time on a server without a GPU, and it
must stay torch-free (an inference replica's memory and start-up time). The CUDA driver
library answers the same question torch's ``cuda.is_available()`` asks it, in microseconds.
"""

from __future__ import annotations

import ctypes
import functools

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
