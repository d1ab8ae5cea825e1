"""The device the device-aware tests run on: APG_TEST_DEVICE (or pytest --apg-device), default cpu.

`APG_TEST_DEVICE=cuda make test` runs the guidance, integration and built-in-model tests with their tensors and
tiny pipelines on the GPU; on a machine without CUDA those tests skip with the reason, the rest run as usual.
"""

import os

import torch

DEVICE_MODULES = ("test_guidance", "test_integration_", "test_builtin", "test_device")  # name prefixes


def test_device() -> torch.device:
    name = os.environ.get("APG_TEST_DEVICE", "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"APG_TEST_DEVICE={name!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None


def unavailable(device: torch.device) -> str | None:
    """Why `device` cannot run tests here, or None."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"APG_TEST_DEVICE={device}: torch.cuda.is_available() is False on this machine"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"APG_TEST_DEVICE={device}: only {torch.cuda.device_count()} CUDA device(s)"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"APG_TEST_DEVICE={device}: MPS is not available on this machine"
    return None


DEVICE = test_device()
# Where tiny pipelines and test tensors go: DEVICE inside a device-aware module, the CPU elsewhere (conftest sets it).
current = torch.device("cpu")


def is_device_module(name: str) -> bool:
    return name.startswith(DEVICE_MODULES)
