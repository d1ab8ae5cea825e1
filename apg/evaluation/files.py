"""Atomic writes, image folders and provenance: the pieces every evaluation output shares."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import secrets
from importlib import metadata
from pathlib import Path

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TMP_PREFIX = ".tmp-"  # partial files: skipped by every folder listing, removed on resume
RUN_FILE = "run.json"  # what `generate` made in a folder; its samples are image_name(i, num_images)


def image_name(index: int, num_images: int) -> str:
    """The file name of sample `index` of a run of `num_images`: zero-padded, so names sort by index."""
    return f"{index:0{max(6, len(str(num_images - 1)))}d}.png"


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new temp file next to `path`, created with mode 0666 so the kernel applies the user's umask.

    tempfile.mkstemp would make it 0600 whatever the umask, and the rename keeps that mode: shared runs
    need outputs the group (or everyone) can read.
    """
    while True:
        tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Write to a temporary file next to `path`, then rename: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes):
    with atomic_open(path, "wb") as file:
        file.write(data)


def write_text(path, text: str):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def save_png(path, image, text: dict[str, str] | None = None):
    """PNG with optional text chunks, written atomically; deterministic bytes for the same pixels and text."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    write_bytes(path, buffer.getvalue())


def list_images(folder) -> list[Path]:
    """Image files directly in `folder`, sorted by name; temporary files of interrupted writes are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder {str(folder)!r} does not exist or is not a directory")
    return sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(TMP_PREFIX) and p.is_file()
    )


def versions() -> dict[str, str]:
    """Versions of everything that can change a number: Python and the installed packages."""
    out = {"python": platform.python_version()}
    for package in ("apg-diffusers", "torch", "diffusers", "transformers", "accelerate", "torch-fidelity",
                    "numpy", "pillow", "scipy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def process_state():
    """accelerate's PartialState for this process, also across CPU-only processes.

    `accelerate launch --multi_gpu --num_processes N` starts N processes with torchrun; on a machine
    without CUDA (or with ACCELERATE_USE_CPU set, as `--cpu` does) they must join with gloo on the CPU,
    which PartialState does only when told `cpu=True`.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
