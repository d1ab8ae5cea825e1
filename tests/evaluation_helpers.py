"""Test helpers for apg.evaluation: a tiny registered feature extractor and a fake pipeline.

Also run as a script by the distributed and resume tests (see `main`) and the kill test (see `apg_eval`).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

EXTRACTOR = "apg-test-pool"


class PoolFeatures(FeatureExtractorBase):
    """Colour layout features, no weights: 4x4 average-pooled RGB (48-d) and 10 fixed random 'logits'."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.register_buffer("projection", torch.randn(48, 10, generator=torch.Generator().manual_seed(0)))

    @staticmethod
    def get_provided_features_list():
        return "pool", "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "pool", "kid": "pool", "prc": "pool"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):  # [B, 3, H, W], uint8
        pool = F.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)  # [B, 48]
        features = {"pool": pool, "logits_unbiased": 4.0 * pool @ self.projection}
        return tuple(features[name] for name in self.features_list)


def register_extractor():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR, PoolFeatures)
    return EXTRACTOR


def write_images(folder, count, seed=0, size=32, tint=(1.0, 1.0, 1.0)):
    """`count` random PNGs (smooth colour fields with some pixels at 0 and 255) in a new folder; returns it."""
    from PIL import Image

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        field = F.interpolate(torch.rand(1, 3, 4, 4, generator=gen), size=size, mode="bilinear")[0]  # [3, H, W]
        field = 1.6 * field * torch.tensor(tint)[:, None, None] - 0.3  # out of [0, 1] here and there: clipped
        pixels = (field.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return folder


CLASSES = ("red", "green", "blue", "grey")
PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.15, 0.2, 0.9], [0.5, 0.5, 0.5]])  # [K, 3]


class FakePipeline:
    """Stand-in with DiTPipeline's calling convention: a few x0-space steps guided by `self.guidance`.

    The conditional prediction pulls towards the class colour, the unconditional one towards grey, so a
    larger CFG scale pushes colours out of gamut: saturation grows with the scale, as with real models.
    Env APG_FAKE_DELAY (seconds per call) slows it down for kill tests; APG_FAKE_LOG appends the seeds
    of every generated image to a file.
    """

    def __init__(self, size=16):
        self.size, self.guidance = size, None
        self.labels = {name: k for k, name in enumerate(CLASSES)}

    def get_label_ids(self, names):
        return [self.labels[name] for name in names]

    def __call__(self, class_labels, num_inference_steps, generator, output_type="pil"):
        import os
        import time

        from PIL import Image

        assert self.guidance is not None, "FakePipeline must be guided"
        self.guidance.reset()
        noise = torch.stack([torch.randn(3, self.size, self.size, generator=g) for g in generator])  # [B, 3, H, W]
        colours = PALETTE[torch.tensor(class_labels)][:, :, None, None]  # [B, 3, 1, 1]
        x = noise
        for step in range(num_inference_steps):
            sigma = 1.0 - step / num_inference_steps
            pred_cond = colours + 0.2 * sigma * x  # [B, 3, H, W], x0 space
            pred_uncond = 0.5 + 0.2 * sigma * x
            denoised = self.guidance(pred_cond, pred_uncond, sigma=sigma, step=step)
            x = denoised + (sigma - 1.0 / num_inference_steps) * noise
        pixels = (denoised.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if os.environ.get("APG_FAKE_LOG"):
            with open(os.environ["APG_FAKE_LOG"], "a") as log:
                log.write("".join(f"{g.initial_seed()}\n" for g in generator))
        time.sleep(float(os.environ.get("APG_FAKE_DELAY", "0")))
        return SimpleNamespace(images=[Image.fromarray(p) for p in pixels])


def fake_guide(pipe, guidance):
    """Stand-in for apg.guide on a FakePipeline: a context manager that sets its guidance."""
    import contextlib

    @contextlib.contextmanager
    def guided():
        pipe.guidance = guidance
        try:
            yield pipe
        finally:
            pipe.guidance = None

    return guided()


def main(argv=None):
    """Generation run for subprocess tests: `python tests/evaluation_helpers.py OUT --num-images N ...`."""
    import argparse

    import apg
    from apg.evaluation import generation as generate_module

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", choices=("fake", "builtin"), default="fake")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--scale", type=float, default=3.0)
    parser.add_argument("--score", help="then score the images against this folder, into OUT/score.json")
    args = parser.parse_args(argv)
    if args.model == "fake":
        pipe, classes = FakePipeline(), list(CLASSES)
        generate_module.apply_guidance = fake_guide
    else:
        pipe, classes = apg.load_builtin(), ["airplane", "cat", "ship"]
    generate_module.generate(pipe, apg.APG(args.scale, norm_threshold=2.0), args.out, num_images=args.num_images,
                             classes=classes, seed=7, batch_size=args.batch_size, num_inference_steps=args.steps,
                             model=args.model, progress=False)
    if args.score:
        from accelerate import PartialState

        from apg.evaluation.files import write_json
        from apg.evaluation.scoring import score

        result = score(args.out, args.score, metrics=("fid", "saturation"), feature_extractor=register_extractor(),
                       batch_size=2, progress=False)
        if PartialState().is_main_process:
            write_json(f"{args.out}/score.json", result)


def apg_eval(argv) -> int:
    """`apg-eval` with every PNG rename delayed by $APG_SLOW_PNG seconds, so a kill can land inside a write."""
    import os
    import time

    from apg.evaluation import cli

    delay, replace = float(os.environ.get("APG_SLOW_PNG", "0")), os.replace

    def slow_replace(src, dst):
        if str(dst).endswith(".png"):
            time.sleep(delay)  # the temp file is complete and not yet renamed
        replace(src, dst)

    os.replace = slow_replace
    return cli.main(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    if sys.argv[1:2] == ["apg-eval"]:  # `python tests/evaluation_helpers.py apg-eval generate ...`
        sys.exit(apg_eval(sys.argv[2:]))
    main()
