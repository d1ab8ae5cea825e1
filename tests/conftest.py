"""Shared test setup: `tiny_pipelines` importable, and a one-thread fixture for the tiny-model tests."""

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
