"""Images per second of apg-eval's two heavy loops: generation and feature extraction.

python benchmarks/bench_evaluation.py [--images N] [--device cpu|cuda]

Generation: the built-in CIFAR-10 model, batch 1 against batch 16 (the ratio shows what batching the
denoiser calls buys). Features: InceptionV3 as torch-fidelity runs it for FID (299x299), on CIFAR-10 (JPEG)
test images; the weights here are random (same compute as the real ones, which need a download).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import apg
from apg.evaluation import features, sources
from apg.evaluation.generation import generate

ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


def random_inception_weights(path: Path):
    """A state dict of torch-fidelity's InceptionV3 with random values (its loader is bypassed once)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    cls = inception.FeatureExtractorInceptionV3
    saved_url, saved_load = inception.load_state_dict_from_url, cls.load_state_dict
    inception.load_state_dict_from_url, cls.load_state_dict = (lambda *a, **k: None), (lambda self, sd: None)
    try:
        torch.save(cls("inception-v3-compat", ["2048"]).state_dict(), path)
    finally:
        inception.load_state_dict_from_url, cls.load_state_dict = saved_url, saved_load


def bench_generation(images, steps, tmp):
    pipe = apg.load_builtin()
    rates = {}
    for batch_size in (1, 16):
        start = time.perf_counter()
        generate(pipe, apg.APG(4.0, norm_threshold=2.5), Path(tmp) / f"b{batch_size}", num_images=images,
                 classes=["cat", "ship"], batch_size=batch_size, num_inference_steps=steps, model="builtin",
                 progress=False)
        rates[batch_size] = images / (time.perf_counter() - start)
    print(f"generation, built-in model, {steps} steps, APG: batch 1 {rates[1]:.1f} images/s, "
          f"batch 16 {rates[16]:.1f} images/s (x{rates[16] / rates[1]:.1f})")


def bench_features(images, tmp):
    weights = Path(tmp) / "inception-random.pth"
    random_inception_weights(weights)
    cats = sources.open_images(f"{ARCHIVE}#cifar10/test/cat/")
    folder = Path(tmp) / "cats"
    folder.mkdir()
    for i in range(images):
        Image.fromarray(cats[i].permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")
    subset = sources.open_images(folder)
    for extractor, layers in (("inception-v3-compat", ["2048"]), (None, [])):
        start = time.perf_counter()
        features.extract_features(subset, extractor, layers, feature_weights=weights, batch_size=64, progress=False)
        rate = images / (time.perf_counter() - start)
        print(f"features, {extractor or 'pixel metrics only'}: {rate:.1f} images/s ({images} CIFAR-10 images)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        bench_features(args.images, tmp)
        bench_generation(args.images, args.steps, tmp)
