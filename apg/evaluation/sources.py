"""Image sources: what `score` reads. Folders (a run folder: its samples only), tar archives, torch-fidelity
dataset names, and references that are either images or FID statistics (.npz)."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, ResourceError
from .files import IMAGE_SUFFIXES, RUN_FILE, image_name, list_images, read_json

__all__ = ["ImageSource", "open_images", "Reference", "open_reference", "UnknownImagesError"]


class UnknownImagesError(InputError):
    """A spec that is neither a folder, an archive nor a registered dataset name."""


class ImageSource(torch.utils.data.Dataset):
    """A fixed list of images read as uint8 [3, H, W] tensors, all of one size; errors name the file.

    `ignored`: files next to the images that are not part of the set (a run folder's grid.png).
    """

    def __init__(self, names, read, description, fingerprint, resize=None, ignored=()):
        if not names:
            raise InputError(f"{description} contains no images ({', '.join(IMAGE_SUFFIXES)})")
        self.names, self._read, self.description, self.resize = list(names), read, description, resize
        self.fingerprint, self.ignored = fingerprint, list(ignored)
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
            raise InputError(f"cannot read image {name} in {self.description}: {error}") from error
        if self.size is not None and rgb.shape[:2] != self.size:
            raise InputError(
                f"image {name} is {rgb.shape[1]}x{rgb.shape[0]} but the images of {self.description} are "
                f"{self.size[1]}x{self.size[0]}: a scored set must have one size; move {name} out of it "
                f"(or pass resize=N, --resize N)"
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


def _run_samples(folder: Path) -> tuple[list[Path], list[Path]] | None:
    """(samples, other images) of a folder written by `generate`, or None for a plain folder of images."""
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        return None
    try:
        num_images = int(read_json(run_file)["num_images"])
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{run_file} is not a run file written by apg-eval generate ({error})") from None
    samples = [folder / image_name(i, num_images) for i in range(num_images)]
    missing = [p.name for p in samples if not p.is_file()]
    if missing:
        raise InputError(
            f"run folder {str(folder)!r} is incomplete: {len(missing)} of its {num_images} samples are missing "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); finish it by rerunning the same "
            "`apg-eval generate` command"
        )
    names = {p.name for p in samples}
    return samples, [p for p in list_images(folder) if p.name not in names]


def _folder_source(folder, resize):
    folder = Path(folder)
    run = _run_samples(folder)
    files, ignored = run if run is not None else (list_images(folder), [])
    digest = hashlib.sha256()
    for path in files:  # names, sizes and modification times: a changed folder gets new features
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    what = "run folder" if run is not None else "folder"
    return ImageSource([p.name for p in files], functools.partial(_read_listed, files), f"{what} {str(folder)!r}",
                       f"folder:{folder.resolve()}:{digest.hexdigest()}", resize, [p.name for p in ignored])


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
        raise ResourceError(
            f"could not load or download the registered reference {name!r} into {root!r} ({error}); offline, pass "
            "a folder of images, a tar archive or a statistics file (.npz) as the reference instead"
        ) from error
    return ImageSource([f"{name}[{i}]" for i in range(len(dataset))], functools.partial(_read_dataset, dataset),
                       f"registered dataset {name!r}", f"registered:{name}:{len(dataset)}", resize)


def open_images(spec, resize=None, datasets_root=None) -> ImageSource:
    """A folder, a tar archive (optionally `archive.tar.gz#sub/folder/`) or a torch-fidelity dataset name.

    A folder written by `generate` (it holds run.json) gives exactly its samples; other images there (a
    grid.png) are left out and listed in `ImageSource.ignored`. An incomplete run is an error.
    """
    from torch_fidelity.registry import DATASETS_REGISTRY

    spec = str(spec)
    path, _, prefix = spec.partition("#")
    if Path(spec).is_dir():
        return _folder_source(spec, resize)
    if path.endswith((".tar", ".tar.gz", ".tgz")) and Path(path).is_file():
        return _archive_source(path, prefix, resize)
    if spec in DATASETS_REGISTRY:
        return _registered_source(spec, resize, datasets_root)
    raise UnknownImagesError(
        f"images {spec!r}: expected a folder of images, a tar archive (.tar, .tar.gz, .tgz; "
        f"'archive.tar.gz#sub/folder/' selects a folder inside it) or a registered dataset name "
        f"({', '.join(DATASETS_REGISTRY)})"
    )


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
        raise InputError(f"reference statistics {str(path)!r} cannot be read as .npz: {error}") from error
    if "mu" not in arrays or "sigma" not in arrays:
        raise InputError(f"reference statistics {str(path)!r} must hold arrays 'mu' and 'sigma' "
                         f"(as written by `apg-eval stats` or pytorch-fid), found {sorted(found)}")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise InputError(f"reference statistics {str(path)!r}: expected mu [D] and sigma [D, D], "
                         f"got {mu.shape} and {sigma.shape}")
    # Files without our metadata (pytorch-fid, clean-fid) hold InceptionV3 pool features.
    default_meta = {"extractor": "inception-v3-compat", "layer": "2048", "size": None, "count": None}
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else default_meta
    return {"mu": mu, "sigma": sigma, "meta": meta}


def open_reference(spec, resize=None, datasets_root=None) -> Reference:
    """A statistics file (.npz), or images: a folder, a tar archive (`a.tar.gz#sub/`), a registered name."""
    if str(spec).endswith(".npz"):
        if not Path(spec).is_file():
            raise InputError(f"reference statistics file {str(spec)!r} does not exist")
        return Reference(spec, statistics=_load_statistics(spec))
    try:
        return Reference(spec, images=open_images(spec, resize, datasets_root))
    except UnknownImagesError as error:
        raise UnknownImagesError(f"reference {str(spec)!r}: expected a statistics file (.npz), a folder of images, "
                                 f"a tar archive or a registered dataset name; {error}") from None
