"""Rebuild the built-in model's parameter file from CIFAR-10 (JPEG), deterministically.

    python -m apg.builtin.fit --data ../shared/data/cifar10-jpeg.tar.gz --rank 256

Per class k: the mean and the covariance of the training images (pixels in [-1, 1], float64), whose top
`rank` eigenpairs are kept; the other eigenvalues are replaced by their mean (the isotropic residual), which
keeps the trace. Members are read in sorted order and eigenvector signs are fixed, so a rebuild on the same
archive gives the same file.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_OUT = Path(__file__).resolve().parent / "cifar10-gmm"
DEFAULT_RANK = 256  # the largest that keeps the fp16 file under 16 MB; see benchmarks/bench_builtin.py ranks


def read_split(archive: str | os.PathLike, split: str = "train") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(class names, images [N, 3, 32, 32] uint8, labels [N]) of one split, in sorted member order."""
    members = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = member.name.split("/")
            # <root>/<split>/<class>/<file>.jpg
            if member.isfile() and len(parts) == 4 and parts[1] == split and parts[3].lower().endswith(".jpg"):
                members[(parts[2], parts[3])] = tar.extractfile(member).read()
    if not members:
        raise ValueError(f"archive {str(archive)!r} has no <root>/{split}/<class>/*.jpg members")
    classes = sorted({name for name, _ in members})
    keys = sorted(members)
    images = np.stack([_decode(members[key]) for key in keys])
    labels = np.array([classes.index(name) for name, _ in keys], dtype=np.int64)
    return classes, images, labels


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)  # [3, H, W]


def class_moments(images: np.ndarray, labels: np.ndarray, num_classes: int):
    """Per class: mean [D] and the covariance's eigenpairs, largest first, all float64."""
    out = []
    for k in range(num_classes):
        x = images[labels == k].reshape(int((labels == k).sum()), -1).astype(np.float64) / 127.5 - 1.0
        mean = x.mean(0)
        centred = x - mean
        cov = centred.T @ centred / len(x)  # maximum-likelihood covariance, [D, D]
        eigvals, eigvecs = np.linalg.eigh(cov)
        eigvals, eigvecs = np.clip(eigvals[::-1], 0.0, None), eigvecs[:, ::-1]
        # eigh's signs are arbitrary: make each vector's largest-magnitude entry positive.
        peak = eigvecs[np.abs(eigvecs).argmax(0), np.arange(eigvecs.shape[1])]
        out.append((mean, eigvals, eigvecs * np.sign(peak)))
    return out


def truncate(moments, rank: int) -> dict[str, np.ndarray]:
    """Low-rank + isotropic parameters: top `rank` eigenpairs, the rest replaced by their mean."""
    dim = moments[0][0].shape[0]
    if not 1 <= rank < dim:
        raise ValueError(f"rank must be in [1, {dim - 1}], got {rank!r}")
    return {
        "means": np.stack([m for m, _, _ in moments]),  # [K, D]
        "basis": np.stack([v[:, :rank] for _, _, v in moments]),  # [K, D, R], orthonormal columns
        "variances": np.stack([e[:rank] for _, e, _ in moments]),  # [K, R]
        "residual_variance": np.array([e[rank:].mean() for _, e, _ in moments]),  # [K]
    }


def build_pipeline(params: dict[str, np.ndarray], class_names: list[str], image_size: int = 32):
    """The ClassConditionalPipeline holding these parameters (float32, CPU)."""
    import torch

    from .model import GaussianMixtureDenoiser
    from .pipeline import ClassConditionalPipeline, default_scheduler

    num_classes, dim, rank = params["basis"].shape
    unet = GaussianMixtureDenoiser(
        num_classes=num_classes, rank=rank, in_channels=dim // image_size**2, sample_size=image_size,
        class_names=list(class_names),
    )
    with torch.no_grad():
        for name, value in params.items():
            getattr(unet, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return ClassConditionalPipeline(unet=unet, scheduler=default_scheduler(unet))


def save_atomically(pipe, out: str | os.PathLike) -> None:
    """save_pretrained (fp16 weights) into a sibling temp folder, then swap it in place of `out`."""
    import torch

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        for path in tmp.rglob("*"):  # safetensors writes 0600; package data must be world-readable
            path.chmod(0o755 if path.is_dir() else 0o644)
        pipe.to(torch.float32)
        old = out.with_name(f".{out.name}-old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apg.builtin.fit", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 JPEG archive (image-folder layout)")
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK, help="eigenvectors kept per class")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="pipeline folder to (re)write")
    args = parser.parse_args(argv)
    from diffusers.utils import logging

    logging.set_verbosity_error()  # .to(float16) before saving warns about keep-in-float32 modules we do not have
    classes, images, labels = read_split(args.data, "train")
    params = truncate(class_moments(images, labels, len(classes)), args.rank)
    save_atomically(build_pipeline(params, classes, images.shape[-1]), args.out)
    print(f"wrote {args.out}: {len(classes)} classes, rank {args.rank}, {len(images)} images")


if __name__ == "__main__":
    main()
