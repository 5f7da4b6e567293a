"""The training device: what a request for one the server lacks is told."""

from __future__ import annotations

import pytest
import torch

from fitgate.errors import ArgumentsError, DeviceUnavailable
from training.precision import pick_device


def test_requesting_cuda_without_a_gpu_names_the_argument_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match=r"device is 'cuda'.*no CUDA device.*'auto'.*'cpu'") as raised:
        pick_device("cuda")
    assert isinstance(raised.value, ArgumentsError) and raised.value.status_code == 422
    assert pick_device("auto") == torch.device("cpu")
