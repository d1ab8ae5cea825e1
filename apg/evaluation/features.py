"""Features of an image source: torch-fidelity's extractors, the per-image pixel metrics, and their cache.

One decoding pass per (source, extractor) gives the network features of every layer asked for and the
per-image pixel metrics (saturation, clipping); the result is cached under a key of what produced it and
split across the processes of `accelerate launch`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import FeatureWeightsError, InputError
from .files import atomic_open, process_state, versions
from .metrics import feature_statistics, per_image_clipping, per_image_saturation
from .sources import ImageSource, open_images

__all__ = ["extract_features", "save_reference_statistics", "default_cache_dir", "feature_layer",
           "FeatureWeightsError", "DEFAULT_EXTRACTORS", "PER_IMAGE"]

# torch-fidelity's defaults: InceptionV3 (the TF FID network) for FID/KID/IS, VGG16 for precision/recall.
DEFAULT_EXTRACTORS = {"fid": "inception-v3-compat", "kid": "inception-v3-compat", "isc": "inception-v3-compat",
                      "prc": "vgg16"}
# Pixel metrics computed per image in the same pass as the features: name -> function of a uint8 batch.
PER_IMAGE = {"saturation": per_image_saturation, "clipping": per_image_clipping}


def _weights_source(extractor: str) -> tuple[str, str] | None:
    """(file name, URL) that torch-fidelity downloads for a built-in extractor."""
    if extractor == "inception-v3-compat":
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3 as url
    elif extractor == "vgg16":
        import torchvision

        url = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    else:
        return None
    return url.rsplit("/", 1)[1], url


def feature_layer(extractor: str, metric: str) -> str:
    """The layer of `extractor` that torch-fidelity uses for `metric` (fid, kid, isc, prc)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise InputError(f"feature_extractor {extractor!r} is not registered with torch-fidelity "
                         f"(registered: {', '.join(FEATURE_EXTRACTORS_REGISTRY)})")
    return FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric(metric)


def check_weights(weights):
    """`weights` (a path or None) names a file; else a ValueError naming it."""
    if weights is not None and not Path(weights).is_file():
        raise InputError(f"feature_weights {str(weights)!r} is not a file")


def _create_extractor(extractor, layers, weights, device):
    from torch_fidelity.utils import create_feature_extractor

    # torch.hub prints "Downloading: ..." before it fails offline; held back, it is shown only on success.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            model = create_feature_extractor(extractor, sorted(layers), cuda=False, verbose=False,
                                             feature_extractor_weights_path=None if weights is None else str(weights))
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if weights is not None:
            raise FeatureWeightsError(f"feature_weights {str(weights)!r} does not load as the weights of the "
                                      f"{extractor} feature extractor ({reason})") from error
        source = _weights_source(extractor)
        if source is None or not isinstance(error, (OSError, ConnectionError)):  # URLError is an OSError
            raise
        file_name, url = source
        raise FeatureWeightsError(
            f"the {extractor} feature extractor needs its weights file {file_name}, which torch-fidelity downloads "
            f"from {url}; the download failed ({reason}). On a machine without internet, "
            f"fetch that file elsewhere and pass it with --feature-weights PATH (Python: feature_weights=PATH; "
            f"with several extractors: --feature-weights {extractor}=PATH, feature_weights={{{extractor!r}: PATH}})."
        ) from error
    sys.stderr.write(printed.getvalue())
    return model.to(device)


def _cache_path(cache_dir, source, extractor, layers, weights, resize):
    if weights is not None:
        stat = Path(weights).stat()
        weights = f"{Path(weights).name}:{stat.st_size}:{stat.st_mtime_ns}"
    from torch_fidelity.version import __version__ as fidelity_version

    key = json.dumps({"source": source.fingerprint, "extractor": extractor, "layers": sorted(layers),
                      "weights": weights, "resize": resize, "per_image": sorted(PER_IMAGE),
                      "torch_fidelity": fidelity_version, "format": 2}, sort_keys=True)
    return Path(cache_dir) / f"features-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz", key


def default_cache_dir() -> Path:
    return Path(os.environ.get("APG_CACHE", Path.home() / ".cache" / "apg" / "eval"))


def extract_features(source: ImageSource, extractor: str | None, layers=(), *, feature_weights=None,
                     batch_size=64, num_workers=None, cache_dir=None, progress=True):
    """{layer: [N, D] float32, "saturation": [N], "clipping": [N] float64} for every image of `source`, in order.

    Spread over the processes of `accelerate launch` (contiguous chunks, gathered in order); with
    `cache_dir`, read from / written to a cache file keyed by the source, extractor, layers and weights.
    Returns (features, info) where info has the count and the images/s of this run.
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = process_state()
    layers = set(layers) if extractor is not None else set()
    check_weights(feature_weights)
    cache_file = key = None
    if cache_dir is not None:
        cache_file, key = _cache_path(cache_dir, source, extractor, layers, feature_weights, source.resize)
        if cache_file.is_file():
            with np.load(cache_file) as cached:
                if str(cached["key"]) == key:  # the full key, not only its hash in the file name
                    return {name: cached[name] for name in cached.files if name != "key"}, {
                        "count": len(source), "cache": str(cache_file), "processes": state.num_processes}
    model = _create_extractor(extractor, layers, feature_weights, state.device) if layers else None
    if num_workers is None:
        num_workers = 0 if state.device.type == "cpu" else min(4, os.cpu_count() or 1)
    start = time.perf_counter()
    with state.split_between_processes(list(range(len(source)))) as indices:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(source, indices), batch_size=batch_size,
                                             num_workers=num_workers)
        chunks = {name: [] for name in (*layers, *PER_IMAGE)}
        bar = tqdm(total=len(indices), desc=f"features ({extractor or 'pixels'})", unit="img",
                   disable=not (progress and state.is_main_process))
        with torch.inference_mode():
            for batch in loader:  # [B, 3, H, W], uint8
                if model is not None:
                    outputs = model.convert_features_tuple_to_dict(model(batch.to(state.device)))
                    for name in layers:
                        chunks[name].append(outputs[name].float().cpu().numpy())
                for name, per_image in PER_IMAGE.items():
                    chunks[name].append(per_image(batch))
                bar.update(len(batch))
        bar.close()
    local = {name: np.concatenate(parts) if parts else None for name, parts in chunks.items()}
    parts = gather_object([local]) if state.num_processes > 1 else [local]
    features = {name: np.concatenate([p[name] for p in parts if p[name] is not None]) for name in local}
    seconds = time.perf_counter() - start
    info = {"count": len(source), "seconds": round(seconds, 3), "images_per_s": round(len(source) / seconds, 2),
            "processes": state.num_processes}
    if progress and state.is_main_process:
        print(f"features ({extractor or 'pixels'}): {len(source)} images in {seconds:.1f} s, "
              f"{len(source) / seconds:.1f} images/s over {state.num_processes} process(es)", file=sys.stderr)
    if cache_file is not None and state.is_main_process:
        with atomic_open(cache_file) as file:
            np.savez(file, key=np.array(key), **features)
    return features, info


def save_reference_statistics(reference, path, *, feature_extractor="inception-v3-compat", feature_weights=None,
                              resize=None, batch_size=64, cache_dir=None, progress=True) -> dict:
    """Write FID statistics (mu, sigma and how they were made) of a reference to an .npz file."""
    source = open_images(reference, resize)
    layer = feature_layer(feature_extractor, "fid")
    features, _ = extract_features(source, feature_extractor, [layer], feature_weights=feature_weights,
                                   batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    mu, sigma = feature_statistics(features[layer])
    meta = {"extractor": feature_extractor, "layer": layer, "size": list(source.output_size),
            "count": len(source), "source": source.description, "versions": versions()}
    if process_state().is_main_process:
        with atomic_open(path) as file:
            np.savez(file, mu=mu, sigma=sigma, meta=np.array(json.dumps(meta, sort_keys=True)))
    return meta
