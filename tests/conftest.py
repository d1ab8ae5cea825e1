"""Shared test setup: `tiny_pipelines` importable, a one-thread fixture for the tiny-model tests, and the test device."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tiny_pipelines


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run several times faster on one thread (the CI machine has two shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser):
    parser.addoption("--apg-device", help="device for the device-aware tests (the same as APG_TEST_DEVICE); default cpu")


def pytest_configure(config):
    # Before any test module imports tests/devices.py, which reads the variable once.
    if config.getoption("--apg-device"):
        os.environ["APG_TEST_DEVICE"] = config.getoption("--apg-device")


def pytest_collection_modifyitems(config, items):
    from devices import DEVICE, is_device_module, unavailable

    reason = unavailable(DEVICE)
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if is_device_module(item.module.__name__):
            item.add_marker(skip)


@pytest.fixture(scope="module", autouse=True)
def _tiny_device(request):
    """Tiny pipelines and test tensors made in a device-aware module go to the test device; elsewhere the CPU."""
    import devices

    devices.current = devices.DEVICE if devices.is_device_module(request.module.__name__) else torch.device("cpu")
    yield
    devices.current = torch.device("cpu")


@pytest.fixture(scope="session")
def device():
    """The test device (tests/devices.py); device-aware modules are skipped when it is unavailable."""
    from devices import DEVICE

    return DEVICE
