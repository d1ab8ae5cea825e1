"""The fused CPU kernel for Algorithm 1 (apg/_fused_cpu.c): built once with the system C compiler, cached, called
through ctypes.

On the CPU the torch formulation is ~8 memory passes and a dozen tiny ops, 3-5x the stock CFG line; the kernel is
two passes, faster than that line. It needs a C compiler at first use (cached per source, compiler and CPU
afterwards). APG_KERNEL picks the implementation: "auto" (default: the kernel when it builds, else torch with one
warning), "fused" (the kernel or an error), "torch" (never build). Both give Algorithm 1 to float32 rounding;
tests hold each to a float64 reference.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("_fused_cpu.c")
_SYMBOLS = {torch.float32: "apg_f32", torch.bfloat16: "apg_bf16"}
_SERVED = (torch.float32, torch.bfloat16, torch.float16)  # float16 through torch's casts and the float32 kernel
_MODES = ("auto", "fused", "torch")
# Tried in order; the first that compiles wins. -march=native is why the cache key includes the CPU's flags;
# -fno-trapping-math (results unchanged) lets gcc if-convert selects on float compares into vector code.
_FLAG_SETS = tuple(["-O3", "-fno-trapping-math", *flags] for flags in (
    ["-march=native", "-fopenmp"],
    ["-march=native", "-fopenmp-simd"],  # compilers without OpenMP (Apple clang): one thread
    ["-fopenmp-simd"],
))

# torch < 2.3 lacks it; there a traced call just graph-breaks at the ctypes call, which stays correct.
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)
_lock = threading.Lock()
_state: dict = {}  # "mode"; "functions": {dtype: ctypes function}, or None when required but unavailable;
#                    "path" of the library or "error"


def mode() -> str:
    """APG_KERNEL, validated: "auto", "fused" or "torch"."""
    value = os.environ.get("APG_KERNEL", "auto").strip().lower()
    if value not in _MODES:
        raise ValueError(f"APG_KERNEL must be one of {list(_MODES)}, got {os.environ['APG_KERNEL']!r}")
    return value


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_folder() -> Path:
    folder = Path.home() / ".cache" / "apg" / "kernels"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:  # read-only home: build for this process only
        return Path(tempfile.mkdtemp(prefix="apg-kernels-"))


def _compile(compiler: str) -> Path:
    """Build the shared library, or reuse the cached one, and return its path; raises RuntimeError."""
    folder, source = _cache_folder(), _SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    targets = []
    for flags in _FLAG_SETS:
        key = "\0".join([compiler, version, *flags, platform.machine(), _cpu_flags()]).encode() + source
        targets.append((flags, folder / f"apg_fused_cpu-{hashlib.sha256(key).hexdigest()[:20]}.so"))
    for _, target in targets:  # a cached build with a fallback flag set means the earlier sets failed here
        if target.exists():
            return target
    errors = []
    for flags, target in targets:
        # Built under a unique name, then renamed: concurrent builds never load a half-written file.
        fd, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
        os.close(fd)
        result = subprocess.run([compiler, *flags, "-shared", "-fPIC", "-o", partial, str(_SOURCE), "-lm"],
                                capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(partial, target)
            return target
        os.unlink(partial)
        last_line = (result.stderr.strip().splitlines() or ["?"])[-1]
        errors.append(f"{' '.join(flags)}: {last_line}")
    raise RuntimeError(f"{compiler} could not compile {_SOURCE.name} ({'; '.join(errors)})")


def _load() -> dict:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise RuntimeError(f"no C compiler found (looked for {os.environ.get('CC', 'cc')!r} on PATH; set CC)")
    path = _compile(compiler)
    library = ctypes.CDLL(str(path))
    pointer, size, real, integer = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    functions = {}
    for dtype, symbol in _SYMBOLS.items():
        function = functions[dtype] = getattr(library, symbol)
        function.argtypes = [pointer, pointer, pointer, pointer, size, size, real, pointer, real, real, real, integer]
        function.restype = None
    return {"path": str(path), "functions": functions}


def functions() -> dict:
    """{dtype: kernel}; empty under APG_KERNEL=torch, or under "auto" when the kernel cannot be built.

    APG_KERNEL is read, and the kernel built, once per process, on first use."""
    if "functions" not in _state:
        with _lock:
            if "functions" not in _state:
                _initialise(mode())
    kernels = _state["functions"]
    if kernels is None:
        raise RuntimeError(f"APG_KERNEL=fused but the fused CPU kernel is unavailable: {_state['error']}")
    return kernels


def _initialise(current: str):
    _state["mode"] = current
    if current == "torch":
        _state["functions"] = {}
        return
    try:
        _state.update(_load())
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _state["error"] = str(error)
        if current == "auto":
            warnings.warn(f"apg: the fused CPU kernel is unavailable ({error}); using the torch implementation "
                          "(same results, slower). Set APG_KERNEL=torch to silence this.", RuntimeWarning,
                          stacklevel=5)
        _state["functions"] = {} if current == "auto" else None


def status() -> str:
    """One line: which implementation guides CPU tensors, and why."""
    try:
        kernels = functions()
    except RuntimeError as error:
        return f"torch (fused kernel required but unavailable: {error})"
    if kernels:
        return f"fused CPU kernel (float32, bfloat16; float16 via float32): {_state['path']}"
    return f"torch ({'APG_KERNEL=torch' if _state['mode'] == 'torch' else _state['error']})"


def kernel(pred_cond: torch.Tensor):
    """The kernel for these (validated) inputs, or None: not on the CPU, float64, autograd or tracing (these need
    torch ops), APG_KERNEL=torch, or no compiler under "auto"."""
    if (pred_cond.device.type != "cpu" or pred_cond.dtype not in _SERVED or _is_compiling()
            or (pred_cond.requires_grad and torch.is_grad_enabled())):
        return None
    return functions().get(torch.float32 if pred_cond.dtype == torch.float16 else pred_cond.dtype)


def apg(kernel, pred_cond, pred_uncond, running, scale, eta, norm_threshold, momentum):
    """Algorithm 1 through `kernel`. Returns (guided, running); running is the float32 momentum state or None."""
    if pred_cond.dtype == torch.float16:
        guided, running = apg(kernel, pred_cond.float(), pred_uncond.float(), running, scale, eta, norm_threshold,
                              momentum)
        return guided.half(), running
    cond, uncond = pred_cond.contiguous(), pred_uncond.contiguous()  # [B, ...], CPU, x0 space
    guided = torch.empty_like(cond)
    if momentum != 0:  # Alg. 1 starts the running average at 0
        running = torch.zeros(cond.shape, dtype=torch.float32) if running is None else running.contiguous()
    per_sample = isinstance(scale, torch.Tensor)
    kernel(cond.data_ptr(), uncond.data_ptr(), running.data_ptr() if momentum != 0 else None, guided.data_ptr(),
           cond.shape[0], math.prod(cond.shape[1:]), 0.0 if per_sample else scale,
           scale.data_ptr() if per_sample else None, eta, norm_threshold, momentum, torch.get_num_threads())
    return guided, running
