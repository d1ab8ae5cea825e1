"""The Triton kernels for CUDA (apg/_triton.py) against the float64 Algorithm 1, on the CPU through Triton's
interpreter, so they are tested on machines without a GPU; the cases are tests/triton_cases.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed (it comes with torch's CUDA builds on Linux)")


def test_triton_kernels_under_the_interpreter():
    here = Path(__file__).parent
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "triton_cases.py")],
                          cwd=here.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
