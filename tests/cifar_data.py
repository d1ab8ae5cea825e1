"""Where the tests find CIFAR-10 (JPEG): $APG_CIFAR10, else ../shared/data/ beside the repository (as in CI).

Tests that read it skip without it, with a reason that says how to provide it; no other test needs it.
"""

import os
from pathlib import Path

import pytest

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR10 = Path(os.environ.get("APG_CIFAR10") or DEFAULT)

needs_cifar10 = pytest.mark.skipif(
    not CIFAR10.is_file(),
    reason=f"CIFAR-10 (JPEG) archive not found at {CIFAR10}: set APG_CIFAR10=/path/to/cifar10-jpeg.tar.gz "
           "(or place it at ../shared/data/cifar10-jpeg.tar.gz beside the repository) to run this test",
)
