"""The fused CPU kernel (apg/_fused.py, apg/_fused_cpu.c): its threaded paths, 16-bit rounding, fallbacks and build.

tests/test_guidance.py already runs every math test on it; this file covers what only the kernel has.
"""

import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from guidance_helpers import pairs, reference, rel_err, use_implementation

import apg
from apg import APG, MomentumCFG, _fused
from apg.guidance import apg_torch


@pytest.fixture
def fused(monkeypatch):
    return use_implementation("fused", monkeypatch)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# [B, ...] shapes that take each path of the kernel on 1 and 2 threads: whole samples per thread (B % threads == 0),
# samples split across threads (B = 1 or 3, >= 32768 elements each), many small samples, and odd sizes.
LARGE = [(2, 4, 128, 128), (1, 4096, 64), (3, 5, 97, 83), (16, 3, 32, 32), (5, 7, 13)]


@pytest.mark.parametrize("shape", LARGE)
@pytest.mark.parametrize("num_threads", [1, 2])
def test_threaded_paths_match_float64(fused, threads, shape, num_threads):
    threads(num_threads)
    conds, unconds = pairs(shape, steps=3, seed=num_threads)
    scales = torch.linspace(2.0, 15.0, shape[0])
    for make, eta, r, beta in [
        (lambda: APG(scales, eta=0.0, norm_threshold=15.0, momentum=-0.5), 0.0, 15.0, -0.5),
        (lambda: APG(7.5, eta=0.3, norm_threshold=1e6, momentum=0.0), 0.3, 1e6, 0.0),
        (lambda: MomentumCFG(4.0, momentum=-0.75, norm_threshold=2.0), 1.0, 2.0, -0.75),
    ]:
        g = make()
        w = scales if isinstance(g.guidance_scale, torch.Tensor) else g.guidance_scale
        expected = reference(conds, unconds, w, eta=eta, r=r, beta=beta)
        for step, (c, u, e) in enumerate(zip(conds, unconds, expected)):
            assert rel_err(g(c, u), e) < 1e-5, (g, step)


@pytest.mark.parametrize("shape", [(2, 4, 128, 128), (3, 4, 8, 8)])
def test_thread_count_changes_only_rounding(fused, threads, shape):
    conds, unconds = pairs(shape, steps=2)
    outs = []
    for n in (1, 2):
        threads(n)
        g = APG(9.0, norm_threshold=3.0, momentum=-0.5)
        outs.append([g(c, u) for c, u in zip(conds, unconds)])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 4, 64, 64), (3, 4, 8, 8)])
def test_half_precision_equals_torch_ops(fused, dtype, shape):
    """Both widen to float32, keep float32 state and round once at the end."""
    conds, unconds = pairs(shape, steps=3, dtype=dtype)
    g, running = APG(7.5, eta=0.0, norm_threshold=15.0, momentum=-0.5), None
    for c, u in zip(conds, unconds):
        got = g(c, u)
        want, running = apg_torch(c, u, running, 7.5, 0.0, 15.0, -0.5)
        assert got.dtype == dtype and g._running.dtype == torch.float32
        # They differ only where float32 rounding (fused multiply-add in C) tips the final 16-bit rounding.
        error = (got.float() - want.float()).abs()
        assert error.max() <= torch.finfo(dtype).eps * want.float().abs().max()
        assert (error == 0).float().mean() > 0.99
    expected = reference(conds, unconds, 7.5, eta=0.0, r=15.0, beta=-0.5)[-1]
    assert rel_err(got, expected) < 2 * torch.finfo(dtype).eps


def test_bfloat16_rounds_to_nearest_even_like_torch(fused):
    """With eta = 1, r never reached and uncond = 0 the kernel writes cond * (1 + t), exact in float32; its
    bfloat16 rounding must match torch's cast bit for bit, ties included."""
    gen = torch.Generator().manual_seed(0)
    magnitudes = torch.pow(10.0, torch.randint(-15, 15, (2, 4096), generator=gen).float())
    cond = (torch.randn(2, 4096, generator=gen) * magnitudes).bfloat16()
    for t in (2.0**-8, 2.0**-9, 3 * 2.0**-9, 2.0**-7 + 2.0**-9):
        out = APG(1.0 + t, eta=1.0, norm_threshold=1e300, momentum=0.0)(cond, torch.zeros_like(cond))
        expected = (cond.float() * (1.0 + t)).bfloat16()
        assert torch.equal(out.view(torch.int16), expected.view(torch.int16)), t


def test_non_contiguous_inputs(fused):
    gen = torch.Generator().manual_seed(1)
    big = torch.randn(2, 8, 64, 64, generator=gen)
    cond, uncond = big[:, :4], big[:, 4:].transpose(2, 3)  # strided views
    assert not cond.is_contiguous() and not uncond.is_contiguous()
    g = APG(5.0, norm_threshold=4.0, momentum=-0.5)
    out = g(cond, uncond)
    assert torch.equal(out, APG(5.0, norm_threshold=4.0, momentum=-0.5)(cond.contiguous(), uncond.contiguous()))


def test_autograd_uses_torch_ops_with_the_same_values(fused):
    (cond,), (uncond,) = pairs((2, 4, 16, 16))
    expected = APG(6.0, norm_threshold=2.0)(cond, uncond)  # the kernel
    leaf = cond.clone().requires_grad_()
    out = APG(6.0, norm_threshold=2.0)(leaf, uncond)
    assert out.grad_fn is not None
    out.square().sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    torch.testing.assert_close(out.detach(), expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # no graph wanted: the kernel
        assert torch.equal(APG(6.0, norm_threshold=2.0)(leaf, uncond), expected)


def test_torch_compile_traces_the_torch_ops(fused):
    """Dynamo cannot trace a ctypes call; under tracing the step is torch ops, so fullgraph=True compiles."""
    (cond,), (uncond,) = pairs((2, 4, 16, 16))
    expected = APG(6.0, norm_threshold=2.0)(cond, uncond)  # the kernel
    g = APG(6.0, norm_threshold=2.0)
    compiled = torch.compile(lambda c, u: g(c, u), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(cond, uncond), expected, rtol=1e-6, atol=1e-6)


def test_worker_threads_get_the_same_results(fused):
    """Gradio calls from worker threads, each with its own guidance object."""
    conds, unconds = pairs((2, 4, 96, 96), steps=4)

    def run(_):
        g = APG(7.5, norm_threshold=15.0, momentum=-0.5)
        return [g(c, u) for c, u in zip(conds, unconds)]

    serial = run(None)
    with ThreadPoolExecutor(4) as pool:
        for result in pool.map(run, range(8)):
            for a, b in zip(result, serial):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_momentum_state_dtype_is_checked(fused):
    g = APG(5.0, momentum=-0.5)
    g(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8))
    assert g._running.dtype == torch.float32
    with pytest.raises(ValueError, match="float32.*float64.*reset"):
        g(torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64))
    g(torch.randn(2, 4, 8, 8).bfloat16(), torch.randn(2, 4, 8, 8).bfloat16())  # float32 state serves bfloat16


def test_status_names_the_implementation(monkeypatch):
    use_implementation("fused", monkeypatch)
    status = apg.kernel_status()
    assert status.startswith("fused CPU kernel") and os.path.exists(status.rsplit(": ", 1)[1])
    use_implementation("torch", monkeypatch)
    assert apg.kernel_status() == "torch (APG_KERNEL=torch)"
    assert _fused.kernel(torch.zeros(2, 3)) is None


def test_bad_apg_kernel_value(monkeypatch):
    monkeypatch.setenv("APG_KERNEL", "cuda")
    monkeypatch.setattr(_fused, "_state", {})
    with pytest.raises(ValueError, match="APG_KERNEL.*'cuda'"):
        APG(5.0)(torch.zeros(2, 3), torch.ones(2, 3))


def test_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("APG_KERNEL", "fused")
    monkeypatch.setattr(_fused, "_state", {})
    with pytest.raises(RuntimeError, match="APG_KERNEL=fused.*no-such-cc"):
        APG(5.0)(torch.zeros(2, 3), torch.ones(2, 3))
    # "auto" warns once, then guides with torch ops
    monkeypatch.setenv("APG_KERNEL", "auto")
    monkeypatch.setattr(_fused, "_state", {})
    (cond,), (uncond,) = pairs((2, 4, 8, 8))
    with pytest.warns(RuntimeWarning, match="no-such-cc.*APG_KERNEL=torch"):
        out = APG(5.0, norm_threshold=1.0)(cond, uncond)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        APG(5.0)(cond, uncond)
    assert rel_err(out, reference([cond], [uncond], 5.0, r=1.0, beta=-0.5)[0]) < 1e-5
    assert "no-such-cc" in apg.kernel_status()


def test_a_failing_compiler_is_reported(monkeypatch, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'broken-cc: cannot build' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("APG_KERNEL", "fused")
    monkeypatch.setattr(_fused, "_state", {})
    with pytest.raises(RuntimeError, match="could not compile.*broken-cc: cannot build"):
        _fused.functions()
    assert not list((tmp_path / ".cache" / "apg" / "kernels").iterdir())  # no half-written library left


BUILD = """
import torch, apg
from apg import _fused
out = apg.MomentumCFG(5.0, norm_threshold=1.0)(torch.ones(2, 40000), torch.zeros(2, 40000))
print(_fused._state["path"], float(out.sum()))
"""


def test_concurrent_first_builds_share_one_cached_library(fused, tmp_path):
    """Two processes building into an empty cache at once: both load a whole library, one file is left."""
    env = {**os.environ, "HOME": str(tmp_path), "APG_KERNEL": "fused"}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    folder = tmp_path / ".cache" / "apg" / "kernels"
    assert [f.name for f in folder.iterdir()] == [os.path.basename(outputs[0][0])]
    assert outputs[0] == outputs[1]
    # a later process reuses it without rebuilding
    mtime = (folder / os.path.basename(outputs[0][0])).stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, check=True)
    assert again.stdout.split() == outputs[0]
    assert (folder / os.path.basename(outputs[0][0])).stat().st_mtime_ns == mtime
    assert float(outputs[0][1]) == pytest.approx(2 * 40000 * (1 + 4 * 1.0 / 200), rel=1e-6)  # ‖diff‖ = 200


def test_the_c_source_ships_in_the_wheel():
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python >= 3.11")

    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["apg"]
    assert any(fnmatch.fnmatch(_fused._SOURCE.name, p) for p in patterns), patterns
