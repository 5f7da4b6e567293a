"""Which device a run trains on, how its runtime is set up, and the mixed precision it trains and scores in.

Not :mod:`fitgate.devices`: that module asks the driver what the machine lends without importing
torch (the API process's question); this one decides, with torch, how a training process uses it.
"""

from __future__ import annotations

import numpy as np
import torch

from fitgate.devices import usable_cpus
from fitgate.errors import DeviceUnavailable


def pick_device(requested: str) -> torch.device:
    """The device to train on: ``auto`` takes CUDA when this machine has it."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            "the training argument device is 'cuda', but this server has no CUDA device: "
            "use device 'auto' (uses a GPU when there is one) or 'cpu'"
        )
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def configure_runtime(device: torch.device, seed: int) -> None:
    """Seed torch and numpy; TF32 matmuls on a GPU, every usable core on a CPU."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # use every core this process may run on (torch defaults to physical cores only)
        torch.set_num_threads(usable_cpus())


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16): elsewhere bf16 is emulated, slower."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def autocast_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """bf16 (fp16 on GPUs without it) on a GPU; on a CPU, bf16 only when asked for and native, else fp32."""
    if device.type != "cuda":
        return torch.bfloat16 if cpu_bf16 and cpu_has_bf16_units() else None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def mixed_precision(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision when ``dtype`` is set, plain fp32 otherwise (the same rule in training and scoring)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
