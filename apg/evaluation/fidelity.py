"""FID, KID, Inception Score and precision/recall through torch-fidelity's feature extractors.

torch-fidelity supplies the networks (InceptionV3 as in the TF reference code, VGG16) and the KID, IS and
precision/recall estimators; this module supplies what it lacks for large runs: image sources that name a
broken file, references given as a folder, a tar archive, a statistics file or a registered dataset name,
a feature cache keyed by what produced it, and extraction split across `accelerate` processes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from .clip import DEFAULT_CLIP_MODEL, clip_score
from .files import IMAGE_SUFFIXES, atomic_open, list_images, process_state, versions
from .metrics import feature_statistics, frechet_distance, per_image_saturation

__all__ = ["ImageSource", "open_images", "Reference", "open_reference", "extract_features", "score",
           "save_reference_statistics", "FeatureWeightsError", "DEFAULT_EXTRACTORS"]

# torch-fidelity's defaults: InceptionV3 (the TF FID network) for FID/KID/IS, VGG16 for precision/recall.
DEFAULT_EXTRACTORS = {"fid": "inception-v3-compat", "kid": "inception-v3-compat", "isc": "inception-v3-compat",
                      "prc": "vgg16"}
FEATURE_METRICS = tuple(DEFAULT_EXTRACTORS)
ALL_METRICS = FEATURE_METRICS + ("saturation", "clip")
SATURATION = "saturation"  # per-image saturation travels with the features: one decoding pass for both


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


class FeatureWeightsError(RuntimeError):
    """The feature extractor's weights are neither given nor downloadable."""


# ------------------------------------------------------------------------------------------------ images


class ImageSource(torch.utils.data.Dataset):
    """A fixed list of images read as uint8 [3, H, W] tensors, all of one size; errors name the file."""

    def __init__(self, names, read, description, fingerprint, resize=None):
        if not names:
            raise ValueError(f"{description} contains no images ({', '.join(IMAGE_SUFFIXES)})")
        self.names, self._read, self.description, self.resize = list(names), read, description, resize
        self.fingerprint = fingerprint
        self.size = None  # (H, W) every image must have; None when each one is resized and cropped anyway
        if resize is None:
            self.size = tuple(self._decode(0).shape[-2:])
        self.output_size = tuple(self[0].shape[-2:])  # (H, W) as scored

    def __len__(self):
        return len(self.names)

    def _decode(self, i) -> torch.Tensor:
        from PIL import Image

        name = self.names[i]
        try:
            with Image.open(self._read(i)) as image:
                rgb = np.asarray(image.convert("RGB"))  # [H, W, 3], uint8
        except Exception as error:
            raise ValueError(f"cannot read image {name} in {self.description}: {error}") from error
        if self.size is not None and rgb.shape[:2] != self.size:
            raise ValueError(
                f"image {name} is {rgb.shape[1]}x{rgb.shape[0]} but the images of {self.description} are "
                f"{self.size[1]}x{self.size[0]}: a scored set must have one size (or pass resize=...)"
            )
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1)  # [3, H, W], uint8

    def __getitem__(self, i) -> torch.Tensor:
        image = self._decode(i)
        if self.resize is not None:
            import torchvision.transforms.v2.functional as TF

            image = TF.center_crop(TF.resize(image, self.resize, antialias=True), [self.resize, self.resize])
        return image


# Readers are module-level functions bound with partial, so DataLoader workers can pickle a source.
def _read_listed(items, i):
    return items[i]


def _read_bytes(members, names, i):
    return io.BytesIO(members[names[i]])


def _read_dataset(dataset, i):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(dataset[i].permute(1, 2, 0).numpy()).save(buffer, format="PNG")  # uint8 [3, H, W] -> PNG
    buffer.seek(0)
    return buffer


def _folder_source(folder, resize):
    files = list_images(folder)
    digest = hashlib.sha256()
    for path in files:  # names, sizes and modification times: a changed folder gets new features
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return ImageSource([p.name for p in files], functools.partial(_read_listed, files), f"folder {str(folder)!r}",
                       f"folder:{Path(folder).resolve()}:{digest.hexdigest()}", resize)


def _archive_source(archive, prefix, resize):
    archive = Path(archive)
    members = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and name.startswith(prefix) and name.lower().endswith(IMAGE_SUFFIXES):
                members[name] = tar.extractfile(member).read()
    names = sorted(members)
    stat = archive.stat()
    where = f"archive {str(archive)!r}" + (f" under {prefix!r}" if prefix else "")
    return ImageSource(names, functools.partial(_read_bytes, members, names), where,
                       f"archive:{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{prefix}", resize)


def _registered_source(name, resize, datasets_root):
    from torch_fidelity.registry import DATASETS_REGISTRY

    root = datasets_root or os.path.join(torch.hub.get_dir(), "..", "fidelity_datasets")
    os.makedirs(root, exist_ok=True)
    try:
        dataset = DATASETS_REGISTRY[name](root, True)
    except Exception as error:
        raise OSError(
            f"could not load or download the registered reference {name!r} into {root!r} ({error}); offline, pass "
            "a folder of images, a tar archive or a statistics file (.npz) as the reference instead"
        ) from error
    return ImageSource([f"{name}[{i}]" for i in range(len(dataset))], functools.partial(_read_dataset, dataset),
                       f"registered dataset {name!r}", f"registered:{name}:{len(dataset)}", resize)


def open_images(spec, resize=None, datasets_root=None) -> ImageSource:
    """A folder, a tar archive (optionally `archive.tar.gz#sub/folder/`) or a torch-fidelity dataset name."""
    from torch_fidelity.registry import DATASETS_REGISTRY

    spec = str(spec)
    path, _, prefix = spec.partition("#")
    if Path(spec).is_dir():
        return _folder_source(spec, resize)
    if path.endswith((".tar", ".tar.gz", ".tgz")) and Path(path).is_file():
        return _archive_source(path, prefix, resize)
    if spec in DATASETS_REGISTRY:
        return _registered_source(spec, resize, datasets_root)
    raise ValueError(
        f"images {spec!r}: expected a folder of images, a tar archive (.tar, .tar.gz, .tgz; "
        f"'archive.tar.gz#sub/folder/' selects a folder inside it) or a registered dataset name "
        f"({', '.join(DATASETS_REGISTRY)})"
    )


# ---------------------------------------------------------------------------------------------- features


def _layer(extractor: str, metric: str) -> str:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(f"feature_extractor {extractor!r} is not registered with torch-fidelity "
                         f"(registered: {', '.join(FEATURE_EXTRACTORS_REGISTRY)})")
    return FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric(metric)


def _create_extractor(extractor, layers, weights, device):
    from torch_fidelity.utils import create_feature_extractor

    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"feature_weights {str(weights)!r} is not a file")
    try:
        model = create_feature_extractor(extractor, sorted(layers), cuda=False, verbose=False,
                                         feature_extractor_weights_path=None if weights is None else str(weights))
    except (OSError, ConnectionError) as error:  # urllib's URLError and HTTPError are OSErrors
        source = _weights_source(extractor)
        if weights is not None or source is None:
            raise
        file_name, url = source
        raise FeatureWeightsError(
            f"the {extractor} feature extractor needs its weights file {file_name}, which torch-fidelity downloads "
            f"from {url}; the download failed ({type(error).__name__}: {error}). On a machine without internet, "
            f"fetch that file elsewhere and pass it with --feature-weights PATH (Python: feature_weights=PATH; "
            f"with several extractors: --feature-weights {extractor}=PATH, feature_weights={{{extractor!r}: PATH}})."
        ) from error
    return model.to(device)


def _cache_path(cache_dir, source, extractor, layers, weights, resize):
    if weights is not None:
        stat = Path(weights).stat()
        weights = f"{Path(weights).name}:{stat.st_size}:{stat.st_mtime_ns}"
    from torch_fidelity.version import __version__ as fidelity_version

    key = json.dumps({"source": source.fingerprint, "extractor": extractor, "layers": sorted(layers),
                      "weights": weights, "resize": resize, "torch_fidelity": fidelity_version, "format": 1},
                     sort_keys=True)
    return Path(cache_dir) / f"features-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz", key


def default_cache_dir() -> Path:
    return Path(os.environ.get("APG_CACHE", Path.home() / ".cache" / "apg" / "eval"))


def extract_features(source: ImageSource, extractor: str | None, layers=(), *, feature_weights=None,
                     batch_size=64, num_workers=None, cache_dir=None, progress=True):
    """{layer: [N, D] float32, "saturation": [N] float64} for every image of `source`, in its order.

    Spread over the processes of `accelerate launch` (contiguous chunks, gathered in order); with
    `cache_dir`, read from / written to a cache file keyed by the source, extractor, layers and weights.
    Returns (features, info) where info has the count and the images/s of this run.
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = process_state()
    layers = set(layers) if extractor is not None else set()
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
        chunks = {name: [] for name in (*layers, SATURATION)}
        bar = tqdm(total=len(indices), desc=f"features ({extractor or 'saturation'})", unit="img",
                   disable=not (progress and state.is_main_process))
        with torch.inference_mode():
            for batch in loader:  # [B, 3, H, W], uint8
                if model is not None:
                    outputs = model.convert_features_tuple_to_dict(model(batch.to(state.device)))
                    for name in layers:
                        chunks[name].append(outputs[name].float().cpu().numpy())
                chunks[SATURATION].append(per_image_saturation(batch))
                bar.update(len(batch))
        bar.close()
    local = {name: np.concatenate(parts) if parts else None for name, parts in chunks.items()}
    parts = gather_object([local]) if state.num_processes > 1 else [local]
    features = {name: np.concatenate([p[name] for p in parts if p[name] is not None]) for name in local}
    seconds = time.perf_counter() - start
    info = {"count": len(source), "seconds": round(seconds, 3), "images_per_s": round(len(source) / seconds, 2),
            "processes": state.num_processes}
    if progress and state.is_main_process:
        print(f"features ({extractor or 'saturation'}): {len(source)} images in {seconds:.1f} s, "
              f"{len(source) / seconds:.1f} images/s over {state.num_processes} process(es)", file=sys.stderr)
    if cache_file is not None and state.is_main_process:
        with atomic_open(cache_file) as file:
            np.savez(file, key=np.array(key), **features)
    return features, info


# --------------------------------------------------------------------------------------------- references


class Reference:
    """What generated images are scored against: images (all metrics) or FID statistics (FID only)."""

    def __init__(self, spec, images: ImageSource | None = None, statistics: dict | None = None):
        self.spec, self.images, self.statistics = str(spec), images, statistics

    def describe(self) -> dict:
        if self.images is not None:
            return {"spec": self.spec, "kind": "images", "count": len(self.images),
                    "size": list(self.images.output_size), "source": self.images.description}
        return {"spec": self.spec, "kind": "statistics", **self.statistics["meta"]}


def _load_statistics(path) -> dict:
    try:
        with np.load(path) as data:  # only the small arrays: ADM's files also hold 10k reference images
            arrays = {name: data[name] for name in ("mu", "sigma", "meta") if name in data.files}
            found = list(data.files)
    except Exception as error:
        raise ValueError(f"reference statistics {str(path)!r} cannot be read as .npz: {error}") from error
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError(f"reference statistics {str(path)!r} must hold arrays 'mu' and 'sigma' "
                         f"(as written by `apg-eval stats` or pytorch-fid), found {sorted(found)}")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"reference statistics {str(path)!r}: expected mu [D] and sigma [D, D], "
                         f"got {mu.shape} and {sigma.shape}")
    # Files without our metadata (pytorch-fid, clean-fid) hold InceptionV3 pool features.
    default_meta = {"extractor": "inception-v3-compat", "layer": "2048", "size": None, "count": None}
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else default_meta
    return {"mu": mu, "sigma": sigma, "meta": meta}


def open_reference(spec, resize=None, datasets_root=None) -> Reference:
    """A statistics file (.npz), or images: a folder, a tar archive (`a.tar.gz#sub/`), a registered name."""
    if str(spec).endswith(".npz"):
        if not Path(spec).is_file():
            raise ValueError(f"reference statistics file {str(spec)!r} does not exist")
        return Reference(spec, statistics=_load_statistics(spec))
    try:
        return Reference(spec, images=open_images(spec, resize, datasets_root))
    except ValueError as error:
        if "expected a folder" in str(error):
            raise ValueError(f"reference {str(spec)!r}: expected a statistics file (.npz), a folder of images, a "
                             f"tar archive or a registered dataset name; {error}") from None
        raise


def save_reference_statistics(reference, path, *, feature_extractor="inception-v3-compat", feature_weights=None,
                              resize=None, batch_size=64, cache_dir=None, progress=True) -> dict:
    """Write FID statistics (mu, sigma and how they were made) of a reference to an .npz file."""
    source = open_images(reference, resize)
    layer = _layer(feature_extractor, "fid")
    features, _ = extract_features(source, feature_extractor, [layer], feature_weights=feature_weights,
                                   batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    mu, sigma = feature_statistics(features[layer])
    meta = {"extractor": feature_extractor, "layer": layer, "size": list(source.output_size),
            "count": len(source), "source": source.description, "versions": versions()}
    if process_state().is_main_process:
        with atomic_open(path) as file:
            np.savez(file, mu=mu, sigma=sigma, meta=np.array(json.dumps(meta, sort_keys=True)))
    return meta


# ------------------------------------------------------------------------------------------------- score


def _weights_per_extractor(feature_weights, extractors) -> dict:
    """feature_weights as {extractor: path}: a single path serves the one extractor in use."""
    if feature_weights is None:
        return {}
    if isinstance(feature_weights, dict):
        unused = set(feature_weights) - set(extractors)
        if unused:
            raise ValueError(f"feature_weights names {sorted(unused)}, but these metrics use {sorted(extractors)}")
        return dict(feature_weights)
    if len(extractors) != 1:
        raise ValueError(
            f"feature_weights: these metrics use {len(extractors)} feature extractors ({', '.join(sorted(extractors))})"
            f"; give one weights file per extractor as {{name: path}} (CLI: --feature-weights NAME=PATH, repeated)"
        )
    return {next(iter(extractors)): feature_weights}


def _check_metrics(metrics):
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics: unknown {unknown or metrics!r}; choose from {', '.join(ALL_METRICS)}")
    return metrics


def score(images, reference=None, *, metrics=("fid", "saturation"), feature_extractor=None, feature_weights=None,
          resize=None, batch_size=64, kid_subset_size=1000, kid_subsets=100, isc_splits=10, seed=2020,
          cache_dir=None, datasets_root=None, clip_model=None, progress=True) -> dict:
    """Score a folder of images (or any `open_images` spec) against a reference; returns a JSON-able dict.

    metrics: any of fid, kid, isc, prc (precision/recall), saturation, clip (CLIP score against the prompts
    stored in the PNGs; its model comes from the hub). feature_extractor: one torch-fidelity extractor name
    for every metric, default InceptionV3 (fid, kid, isc) and VGG16 (prc).
    """
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    metrics = _check_metrics(metrics)
    generated = images if isinstance(images, ImageSource) else open_images(images, resize, datasets_root)
    needs_reference = [m for m in metrics if m in ("fid", "kid", "prc")]
    ref = None
    if needs_reference:
        if reference is None:
            raise ValueError(f"reference is required for {', '.join(needs_reference)}")
        ref = reference if isinstance(reference, Reference) else open_reference(reference, resize, datasets_root)

    # metric -> (extractor, layer); each extractor runs once per image set with all the layers it serves.
    plan = {m: (feature_extractor or DEFAULT_EXTRACTORS[m], None) for m in metrics if m in FEATURE_METRICS}
    plan = {m: (name, _layer(name, m)) for m, (name, _) in plan.items()}
    per_extractor = {}
    for name, layer in plan.values():
        per_extractor.setdefault(name, set()).add(layer)

    if ref is not None and ref.images is not None and ref.images.output_size != generated.output_size:
        raise ValueError(
            f"reference {ref.spec!r} has images of {ref.images.output_size[1]}x{ref.images.output_size[0]} but "
            f"the scored images are {generated.output_size[1]}x{generated.output_size[0]}; expected a reference "
            f"of the same size (or pass resize=N to resize and centre-crop both)"
        )
    if ref is not None and ref.statistics is not None:
        other = [m for m in needs_reference if m != "fid"]
        if other:
            raise ValueError(f"reference {ref.spec!r} is a statistics file, which serves FID only; "
                             f"{', '.join(other)} need a reference of images")
        meta, (name, layer) = ref.statistics["meta"], plan["fid"]
        if (meta["extractor"], meta["layer"]) != (name, layer):
            raise ValueError(f"reference {ref.spec!r} holds statistics of {meta['extractor']} layer {meta['layer']}, "
                             f"expected {name} layer {layer} to score with")
        if meta.get("size") and tuple(meta["size"]) != generated.output_size:
            raise ValueError(f"reference {ref.spec!r} was computed on {meta['size'][1]}x{meta['size'][0]} images, "
                             f"the scored images are {generated.output_size[1]}x{generated.output_size[0]}")

    weights = _weights_per_extractor(feature_weights, per_extractor)
    options = dict(batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    gen_features, ref_features, timing = {}, {}, {}
    for name, layers in per_extractor.items() or [(None, set())]:
        features, timing[name or SATURATION] = extract_features(generated, name, layers,
                                                                feature_weights=weights.get(name), **options)
        gen_features[name] = features
        if ref is not None and ref.images is not None and needs_reference:
            ref_features[name], _ = extract_features(ref.images, name, layers, feature_weights=weights.get(name),
                                                     **options)

    out = {}
    if "saturation" in metrics:  # every extraction pass also records saturation; take the first
        out["saturation"] = float(next(iter(gen_features.values()))[SATURATION].mean())
        if ref_features:
            out["reference_saturation"] = float(next(iter(ref_features.values()))[SATURATION].mean())
    kwargs = dict(verbose=False, rng_seed=seed, kid_subsets=kid_subsets, isc_splits=isc_splits)
    for metric, (name, layer) in plan.items():
        fake = gen_features[name][layer]
        if metric == "fid":
            if ref.statistics is not None:
                mu_ref, sigma_ref = ref.statistics["mu"], ref.statistics["sigma"]
                if mu_ref.shape[0] != fake.shape[1]:
                    raise ValueError(f"reference {ref.spec!r} statistics have dimension {mu_ref.shape[0]}, "
                                     f"expected {fake.shape[1]} ({name} layer {layer})")
            else:
                mu_ref, sigma_ref = feature_statistics(ref_features[name][layer])
            out["fid"] = frechet_distance(*feature_statistics(fake), mu_ref, sigma_ref)
        elif metric == "kid":
            real = ref_features[name][layer]
            subset = min(kid_subset_size, len(fake), len(real))
            kid = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subset_size=subset,
                                         **kwargs)
            out["kid_mean"], out["kid_std"], out["kid_subset_size"] = (
                kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"], subset)
        elif metric == "isc":
            isc = isc_features_to_metric(torch.from_numpy(fake), splits=isc_splits, shuffle=True, rng_seed=seed)
            out["isc_mean"], out["isc_std"] = isc["inception_score_mean"], isc["inception_score_std"]
        elif metric == "prc":
            prc = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(ref_features[name][layer]),
                                         **kwargs)
            out["precision"], out["recall"], out["f_score"] = prc["precision"], prc["recall"], prc["f_score"]

    if "clip" in metrics:
        if isinstance(images, ImageSource):
            raise ValueError("metrics: 'clip' needs a folder of generated images (their PNGs carry the prompts)")
        clip = clip_score(images, clip_model=clip_model or DEFAULT_CLIP_MODEL, batch_size=batch_size,
                          progress=progress)
        out.update(clip_score=clip["clip_score"], clip_score_std=clip["clip_score_std"])
    result = {
        "metrics": out,
        "images": {"spec": str(images if not isinstance(images, ImageSource) else images.description),
                   "count": len(generated), "size": list(generated.output_size)},
        "reference": ref.describe() if ref is not None else None,
        "feature_extractors": {m: {"extractor": n, "layer": l} for m, (n, l) in plan.items()},
        "feature_weights": {name: str(path) for name, path in weights.items()},
        "resize": resize,
        "clip_model": (clip_model or DEFAULT_CLIP_MODEL) if "clip" in metrics else None,
        "timing": timing,
        "versions": versions(),
    }
    run_file = Path(str(images)) / "run.json"
    if not isinstance(images, ImageSource) and run_file.is_file():
        result["run"] = json.loads(run_file.read_text())  # how the images were generated
    return result
