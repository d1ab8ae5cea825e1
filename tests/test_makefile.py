"""First contact with the Makefile: a missing venv module or Python is one line naming what to install."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def _make(tmp_path, *args):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}  # under `make test`
    return subprocess.run(["make", "--no-print-directory", f"VENV={venv}", *args, f"{venv}/bin/.installed"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env), venv


def test_a_python_without_venv_names_debians_python3_venv(tmp_path):
    python = tmp_path / "python3"  # Debian's python3 without python3-venv: no ensurepip
    python.write_text('#!/bin/sh\ncase "$*" in *ensurepip*) echo "No module named ensurepip" >&2; exit 1;; esac\n'
                      'exec python3 "$@"\n')
    python.chmod(0o755)
    run, venv = _make(tmp_path, f"PYTHON={python}")
    assert run.returncode != 0 and not venv.exists()
    ours = [line for line in run.stderr.splitlines() if not line.startswith("make: ***")]
    assert ours == [f"make: {python} -m venv does not work: install Debian's python3-venv "
                    "(apt-get install python3-venv)"], run.stderr


def test_a_missing_python_is_one_line(tmp_path):
    run, venv = _make(tmp_path, "PYTHON=no-such-python3")
    assert run.returncode != 0 and not venv.exists()
    assert run.stderr.splitlines()[0] == \
        "make: no-such-python3 not found: install Python >= 3.10 (Debian: apt-get install python3 python3-venv)"


def test_torch_index_installs_torch_from_there_first(tmp_path):
    url = "https://download.pytorch.org/whl/cpu"
    plan = _make(tmp_path, "-n", f"TORCH_INDEX={url}")[0].stdout.splitlines()
    torch_line = next(i for i, line in enumerate(plan) if f"pip install --quiet torch torchvision --index-url {url}"
                      in line)
    assert torch_line < next(i for i, line in enumerate(plan) if '-e ".[test]"' in line)
    assert not any("--index-url" in line for line in _make(tmp_path, "-n")[0].stdout.splitlines())
