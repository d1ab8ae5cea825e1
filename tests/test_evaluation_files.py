"""Atomic writes keep the user's umask: shared runs need outputs others can read."""

import os
import stat

import pytest
from PIL import Image

from apg.evaluation.files import TMP_PREFIX, atomic_open, save_png, write_json, write_text


@pytest.fixture
def umask():
    """Set the process umask for one test, restored after."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_take_the_umask(umask, tmp_path, mask, mode):
    umask(mask)
    write_json(tmp_path / "run.json", {"a": 1})
    write_text(tmp_path / "sweep.csv", "a,b\n")
    save_png(tmp_path / "000000.png", Image.new("RGB", (4, 4)), {"apg": "{}"})
    with atomic_open(tmp_path / "features.npz") as file:
        file.write(b"x")
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "score.json"
    write_json(target, {"old": True})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target) as file:
            file.write(b'{"new"')
            raise RuntimeError("boom")
    assert target.read_text() == '{\n  "old": true\n}\n' and os.listdir(tmp_path) == ["score.json"]
