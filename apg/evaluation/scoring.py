"""score(): FID, KID, Inception Score, precision/recall, saturation, clipping and CLIP score of an image set.

torch-fidelity supplies the networks and the KID, IS and precision/recall estimators; `sources` reads the
images, `features` extracts (and caches) what the metrics read; each metric is one function of the table
METRICS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from .clip import DEFAULT_CLIP_MODEL, clip_score
from .features import DEFAULT_EXTRACTORS, PER_IMAGE, check_weights, extract_features, feature_layer
from .files import RUN_FILE, versions
from .metrics import feature_statistics, frechet_distance
from .sources import ImageSource, Reference, open_images, open_reference

__all__ = ["score", "check_metrics", "METRICS", "FEATURE_METRICS", "NEEDS_REFERENCE"]

FEATURE_METRICS = tuple(DEFAULT_EXTRACTORS)  # the metrics that read network features
NEEDS_REFERENCE = ("fid", "kid", "prc")


@dataclass
class _Inputs:
    """What the metric functions read: the features of both sets, the plan and the options."""

    fake: dict  # extractor (None: pixels only) -> {layer or per-image metric: array}, the scored images
    real: dict  # the same for the reference images (empty for a statistics file or no reference)
    plan: dict  # feature metric -> (extractor, layer)
    reference: Reference | None
    images: object  # what was passed as `images` (a folder for clip)
    options: dict

    def features(self, metric, real=False):
        name, layer = self.plan[metric]
        return (self.real if real else self.fake)[name][layer]

    def per_image(self, metric, real=False):
        found = self.real if real else self.fake
        return next(iter(found.values()))[metric] if found else None  # every pass records the pixel metrics


def _fid(x: _Inputs) -> dict:
    fake, ref = x.features("fid"), x.reference
    if ref.statistics is not None:
        mu_ref, sigma_ref = ref.statistics["mu"], ref.statistics["sigma"]
        if mu_ref.shape[0] != fake.shape[1]:
            name, layer = x.plan["fid"]
            raise InputError(f"reference {ref.spec!r} statistics have dimension {mu_ref.shape[0]}, "
                             f"expected {fake.shape[1]} ({name} layer {layer})")
    else:
        mu_ref, sigma_ref = feature_statistics(x.features("fid", real=True))
    return {"fid": frechet_distance(*feature_statistics(fake), mu_ref, sigma_ref)}


def _kid(x: _Inputs) -> dict:
    from torch_fidelity.metric_kid import kid_features_to_metric

    fake, real = x.features("kid"), x.features("kid", real=True)
    subset = min(x.options["kid_subset_size"], len(fake), len(real))
    kid = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subset_size=subset,
                                 kid_subsets=x.options["kid_subsets"], rng_seed=x.options["seed"], verbose=False)
    return {"kid_mean": kid["kernel_inception_distance_mean"], "kid_std": kid["kernel_inception_distance_std"],
            "kid_subset_size": subset}


def _isc(x: _Inputs) -> dict:
    from torch_fidelity.metric_isc import isc_features_to_metric

    isc = isc_features_to_metric(torch.from_numpy(x.features("isc")), splits=x.options["isc_splits"], shuffle=True,
                                 rng_seed=x.options["seed"])
    return {"isc_mean": isc["inception_score_mean"], "isc_std": isc["inception_score_std"]}


def _prc(x: _Inputs) -> dict:
    from torch_fidelity.metric_prc import prc_features_to_metric

    prc = prc_features_to_metric(torch.from_numpy(x.features("prc")), torch.from_numpy(x.features("prc", real=True)),
                                 verbose=False)
    return {"precision": prc["precision"], "recall": prc["recall"], "f_score": prc["f_score"]}


def _pixel_mean(metric):
    """The mean of a per-image pixel metric, for the scored images and (when given as images) the reference."""

    def mean(x: _Inputs) -> dict:
        out = {metric: float(x.per_image(metric).mean())}
        if x.real:
            out[f"reference_{metric}"] = float(x.per_image(metric, real=True).mean())
        return out

    mean.__doc__ = f"Mean per-image {metric} ({PER_IMAGE[metric].__name__})."
    return mean


def _clip(x: _Inputs) -> dict:
    if isinstance(x.images, ImageSource):
        raise InputError("metrics: 'clip' needs a folder of generated images (their PNGs carry the prompts)")
    clip = clip_score(x.images, clip_model=x.options["clip_model"], batch_size=x.options["batch_size"],
                      progress=x.options["progress"])
    return {"clip_score": clip["clip_score"], "clip_score_std": clip["clip_score_std"]}


# metric -> function of the inputs returning its numbers; the order is the order of score.json's keys.
METRICS = {"fid": _fid, "kid": _kid, "isc": _isc, "prc": _prc,
           **{name: _pixel_mean(name) for name in PER_IMAGE}, "clip": _clip}


def _weights_per_extractor(feature_weights, extractors) -> dict:
    """feature_weights as {extractor: path}: a single path serves the one extractor in use."""
    if feature_weights is None:
        return {}
    if isinstance(feature_weights, dict):
        unused = set(feature_weights) - set(extractors)
        if unused:
            raise InputError(f"feature_weights names {sorted(unused)}, but these metrics use {sorted(extractors)}")
        weights = dict(feature_weights)
    elif len(extractors) != 1:
        raise InputError(
            f"feature_weights: these metrics use {len(extractors)} feature extractors ({', '.join(sorted(extractors))})"
            f"; give one weights file per extractor as {{name: path}} (CLI: --feature-weights NAME=PATH, repeated)"
        )
    else:
        weights = {next(iter(extractors)): feature_weights}
    for path in weights.values():
        check_weights(path)
    return weights


def check_metrics(metrics, reference=None) -> tuple[str, ...]:
    """The metrics as a tuple; an InputError for an unknown one, or for one that needs a reference without it."""
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise InputError(f"metrics: unknown {unknown or metrics!r}; choose from {', '.join(METRICS)}")
    needs_reference = [m for m in metrics if m in NEEDS_REFERENCE]
    if needs_reference and reference is None:
        raise InputError(f"reference is required for {', '.join(needs_reference)}")
    return metrics


def _check_reference(ref: Reference, plan: dict, needs_reference, generated: ImageSource):
    if ref.images is not None and ref.images.output_size != generated.output_size:
        raise InputError(
            f"reference {ref.spec!r} has images of {ref.images.output_size[1]}x{ref.images.output_size[0]} but "
            f"the scored images are {generated.output_size[1]}x{generated.output_size[0]}; expected a reference "
            f"of the same size (or pass resize=N to resize and centre-crop both)"
        )
    if ref.statistics is not None:
        other = [m for m in needs_reference if m != "fid"]
        if other:
            raise InputError(f"reference {ref.spec!r} is a statistics file, which serves FID only; "
                             f"{', '.join(other)} need a reference of images")
        meta, (name, layer) = ref.statistics["meta"], plan["fid"]
        if (meta["extractor"], meta["layer"]) != (name, layer):
            raise InputError(f"reference {ref.spec!r} holds statistics of {meta['extractor']} layer {meta['layer']}, "
                             f"expected {name} layer {layer} to score with")
        if meta.get("size") and tuple(meta["size"]) != generated.output_size:
            raise InputError(f"reference {ref.spec!r} was computed on {meta['size'][1]}x{meta['size'][0]} images, "
                             f"the scored images are {generated.output_size[1]}x{generated.output_size[0]}")


def score(images, reference=None, *, metrics=("fid", "saturation", "clipping"), feature_extractor=None,
          feature_weights=None, resize=None, batch_size=64, kid_subset_size=1000, kid_subsets=100, isc_splits=10,
          seed=2020, cache_dir=None, datasets_root=None, clip_model=None, progress=True) -> dict:
    """Score a folder of images (or any `open_images` spec) against a reference; returns a JSON-able dict.

    metrics: any of METRICS: fid, kid, isc, prc (precision/recall), saturation, clipping (fraction of channel
    values at 0 or 255), clip (CLIP score against the prompts stored in the PNGs; its model comes from the
    hub). feature_extractor: one torch-fidelity extractor name for every metric, default InceptionV3 (fid,
    kid, isc) and VGG16 (prc). A run folder (with run.json) is scored on its samples only.
    """
    metrics = check_metrics(metrics, reference)
    generated = images if isinstance(images, ImageSource) else open_images(images, resize, datasets_root)
    needs_reference = [m for m in metrics if m in NEEDS_REFERENCE]
    ref = None
    if needs_reference:
        ref = reference if isinstance(reference, Reference) else open_reference(reference, resize, datasets_root)

    # metric -> (extractor, layer); each extractor runs once per image set with all the layers it serves.
    plan = {}
    for metric in (m for m in metrics if m in FEATURE_METRICS):
        name = feature_extractor or DEFAULT_EXTRACTORS[metric]
        plan[metric] = (name, feature_layer(name, metric))
    per_extractor = {}
    for name, layer in plan.values():
        per_extractor.setdefault(name, set()).add(layer)
    if ref is not None:
        _check_reference(ref, plan, needs_reference, generated)

    weights = _weights_per_extractor(feature_weights, per_extractor)
    options = dict(batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    fake, real, timing = {}, {}, {}
    for name, layers in per_extractor.items() or [(None, set())]:
        fake[name], timing[name or "pixels"] = extract_features(generated, name, layers,
                                                                feature_weights=weights.get(name), **options)
        if ref is not None and ref.images is not None:
            real[name], _ = extract_features(ref.images, name, layers, feature_weights=weights.get(name), **options)

    inputs = _Inputs(fake, real, plan, ref, images, dict(
        kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, isc_splits=isc_splits, seed=seed,
        clip_model=clip_model or DEFAULT_CLIP_MODEL, batch_size=batch_size, progress=progress))
    out = {}
    for metric in METRICS:  # table order, whatever the order asked in
        if metric in metrics:
            out.update(METRICS[metric](inputs))
    result = {
        "metrics": out,
        "images": {"spec": str(images if not isinstance(images, ImageSource) else images.description),
                   "count": len(generated), "size": list(generated.output_size), "ignored": generated.ignored},
        "reference": ref.describe() if ref is not None else None,
        "feature_extractors": {m: {"extractor": n, "layer": l} for m, (n, l) in plan.items()},
        "feature_weights": {name: str(path) for name, path in weights.items()},
        "resize": resize,
        "clip_model": (clip_model or DEFAULT_CLIP_MODEL) if "clip" in metrics else None,
        "timing": timing,
        "versions": versions(),
    }
    run_file = Path(str(images)) / RUN_FILE
    if not isinstance(images, ImageSource) and run_file.is_file():
        result["run"] = json.loads(run_file.read_text())  # how the images were generated
    return result
