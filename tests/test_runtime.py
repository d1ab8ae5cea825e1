"""apg.runtime: the one device, dtype and loading policy of the CLI, the evaluation and the app."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from apg.runtime import ModelLoadError, load_pipeline, resolve_device, resolve_dtype


def test_default_device_and_dtype_follow_the_machine():
    device = resolve_device(None)
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype(torch.float16, None) is torch.float16
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        assert resolve_dtype(None, "cuda") is expected


@pytest.mark.parametrize("name, message", [
    ("gpu", "device must be a torch device"),
    ("cuda:99", "cuda:99"),
])
def test_bad_device_is_one_line(name, message):
    with pytest.raises(ValueError, match=message) as info:
        resolve_device(name)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="'cuda': CUDA is not available on this machine"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["fp16", "float64", torch.int8])
def test_bad_dtype_names_the_choices(name):
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, bfloat16"):
        resolve_dtype(name, "cpu")


def test_builtin_loads_float32_on_the_device():
    pipe = load_pipeline("builtin", "cpu")
    assert pipe.unet.device.type == "cpu" and pipe.unet.dtype is torch.float32
    assert load_pipeline("builtin", "cpu", "bfloat16").unet.dtype is torch.bfloat16


def test_local_folder_loads_with_the_dtype_and_bad_folders_are_one_line(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from tiny_pipelines import tiny_sd_pipeline

    tiny_sd_pipeline().save_pretrained(tmp_path / "tiny")
    pipe = load_pipeline(str(tmp_path / "tiny"), "cpu", "bfloat16")
    assert pipe.unet.dtype is torch.bfloat16 and pipe.unet.device.type == "cpu"
    with pytest.raises(ModelLoadError, match="without a model_index.json"):
        load_pipeline(str(tmp_path), "cpu")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text('{"_class_name": "NoSuchPipeline"}')
    with pytest.raises(ModelLoadError, match="broken") as info:
        load_pipeline(str(tmp_path / "broken"), "cpu")
    assert len(str(info.value).splitlines()) == 1
    with pytest.raises(ModelLoadError, match="device 'gpu'|device must be"):
        load_pipeline("builtin", "gpu")


def test_no_torch_dtype_deprecation_warning(tmp_path, recwarn):
    sys.path.insert(0, os.path.dirname(__file__))
    from tiny_pipelines import tiny_sd_pipeline

    tiny_sd_pipeline().save_pretrained(tmp_path / "tiny")
    load_pipeline(str(tmp_path / "tiny"), "cpu", "float32")
    assert not [w for w in recwarn if "torch_dtype" in str(w.message)]
