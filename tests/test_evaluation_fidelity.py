"""FID/KID/IS/precision-recall plumbing end to end, with a small registered feature extractor (no weights).

Reference: torch-fidelity's own `calculate_metrics` on the same folders with the same extractor.
Data: CIFAR-10 (JPEG) test images for the tests marked `needs_cifar10` (see tests/cifar_data.py: they skip
without it); the others run on small synthetic images.
"""

import json
import shutil
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch_fidelity
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluation_helpers as helpers  # noqa: E402
import apg  # noqa: E402
from cifar_data import CIFAR10 as ARCHIVE  # noqa: E402
from cifar_data import needs_cifar10  # noqa: E402

from apg.evaluation import clipping, saturation, sources  # noqa: E402
from apg.evaluation.cli import main as cli_main  # noqa: E402
from apg.evaluation.features import FeatureWeightsError, save_reference_statistics  # noqa: E402
from apg.evaluation.scoring import score  # noqa: E402
from apg.evaluation.sources import UnknownImagesError  # noqa: E402

EXTRACTOR = helpers.register_extractor()
PER_SET = 120


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """Folders cat_a, cat_b (disjoint cats) and ship of CIFAR-10 (JPEG) test images, bytes as in the archive."""
    if not ARCHIVE.is_file():
        pytest.skip(needs_cifar10.kwargs["reason"])
    root = tmp_path_factory.mktemp("cifar")
    wanted = {"cat": 2 * PER_SET, "ship": PER_SET}
    found = {name: [] for name in wanted}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and parts[-3:-2] == ["test"] and parts[-2] in wanted:
                if len(found[parts[-2]]) < wanted[parts[-2]]:
                    found[parts[-2]].append((parts[-1], tar.extractfile(member).read()))
            if all(len(found[k]) == n for k, n in wanted.items()):
                break
    folders = {"cat_a": found["cat"][:PER_SET], "cat_b": found["cat"][PER_SET:], "ship": found["ship"]}
    for folder, files in folders.items():
        (root / folder).mkdir()
        for name, data in files:
            (root / folder / name).write_bytes(data)
    return {name: root / name for name in folders}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Folders warm, cool (24 random 32x32 PNGs each, different colour statistics), no data needed."""
    root = tmp_path_factory.mktemp("synthetic")
    return {name: helpers.write_images(root / name, 24, seed=k, tint=tint)
            for k, (name, tint) in enumerate((("warm", (1.0, 0.6, 0.3)), ("cool", (0.3, 0.6, 1.0))))}


def fidelity_reference(input1, input2, **metrics):
    return torch_fidelity.calculate_metrics(
        input1=str(input1), input2=str(input2), cuda=False, feature_extractor=EXTRACTOR, verbose=False,
        cache=False, kid_subset_size=PER_SET, save_cpu_ram=True, **metrics)


def test_score_matches_torch_fidelity_for_fid_kid_isc_prc(cifar, tmp_path):
    ours = score(cifar["cat_a"], cifar["ship"], metrics=("fid", "kid", "isc", "prc", "saturation"),
                 feature_extractor=EXTRACTOR, kid_subset_size=PER_SET, progress=False)["metrics"]
    theirs = fidelity_reference(cifar["cat_a"], cifar["ship"], fid=True, kid=True, isc=True, prc=True)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-6)
    assert ours["isc_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert (ours["precision"], ours["recall"]) == (theirs["precision"], theirs["recall"])
    images = [Image.open(p) for p in sorted(cifar["cat_a"].iterdir())]
    assert ours["saturation"] == pytest.approx(saturation(images), abs=1e-12)
    # The metric sees the data: two sets of cats are closer to each other than cats to ships.
    same = score(cifar["cat_a"], cifar["cat_b"], metrics=("fid",), feature_extractor=EXTRACTOR, progress=False)
    assert same["metrics"]["fid"] < ours["fid"] / 2


def test_archive_reference_statistics_file_and_cache(cifar, tmp_path):
    cache = tmp_path / "cache"
    by_folder = score(cifar["cat_a"], cifar["ship"], metrics=("fid",), feature_extractor=EXTRACTOR,
                      cache_dir=cache, progress=False)
    assert len(list(cache.glob("features-*.npz"))) == 2
    cached = score(cifar["cat_a"], cifar["ship"], metrics=("fid",), feature_extractor=EXTRACTOR,
                   cache_dir=cache, progress=False)
    assert cached["metrics"]["fid"] == by_folder["metrics"]["fid"] and "cache" in cached["timing"][EXTRACTOR]
    # A changed folder is a different source: its features are extracted again, not read from the cache.
    shutil.copytree(cifar["ship"], tmp_path / "ship")
    victim = sorted((tmp_path / "ship").iterdir())[0]
    Image.open(victim).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(victim, format="JPEG")
    changed = score(cifar["cat_a"], tmp_path / "ship", metrics=("fid",), feature_extractor=EXTRACTOR,
                    cache_dir=cache, progress=False)
    assert len(list(cache.glob("features-*.npz"))) == 3 and changed["metrics"]["fid"] != by_folder["metrics"]["fid"]

    stats = tmp_path / "ship.npz"
    meta = save_reference_statistics(cifar["ship"], stats, feature_extractor=EXTRACTOR, progress=False)
    assert meta["count"] == PER_SET and meta["size"] == [32, 32]
    by_stats = score(cifar["cat_a"], stats, metrics=("fid",), feature_extractor=EXTRACTOR, progress=False)
    assert by_stats["metrics"]["fid"] == pytest.approx(by_folder["metrics"]["fid"], rel=1e-12)
    with pytest.raises(ValueError, match="statistics file, which serves FID only; kid"):
        score(cifar["cat_a"], stats, metrics=("fid", "kid"), feature_extractor=EXTRACTOR, progress=False)

    # Images read straight from the archive decode exactly as the extracted files.
    folder = sources.open_images(cifar["ship"])
    archive = sources.open_images(f"{ARCHIVE}#cifar10/test/ship/")
    assert len(archive) == 1000 and archive.output_size == (32, 32)
    for i, name in enumerate(folder.names[:5]):
        assert (archive[archive.names.index(f"cifar10/test/ship/{name}")] == folder[i]).all()


def test_wrong_statistics_and_wrong_reference_kinds(synthetic, tmp_path):
    warm, cool = synthetic["warm"], synthetic["cool"]
    pytorch_fid_style = tmp_path / "inception.npz"
    np.savez(pytorch_fid_style, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="inception-v3-compat layer 2048, expected apg-test-pool layer pool"):
        score(warm, pytorch_fid_style, metrics=("fid",), feature_extractor=EXTRACTOR, progress=False)
    no_arrays = tmp_path / "bad.npz"
    np.savez(no_arrays, mean=np.zeros(3))
    with pytest.raises(ValueError, match="must hold arrays 'mu' and 'sigma'"):
        score(warm, no_arrays, feature_extractor=EXTRACTOR, progress=False)
    text = tmp_path / "reference.txt"
    text.write_text("not images")
    with pytest.raises(UnknownImagesError, match="expected a statistics file \\(.npz\\), a folder of images"):
        score(warm, text, feature_extractor=EXTRACTOR, progress=False)
    with pytest.raises(ValueError, match="reference is required for fid"):
        score(warm, None, progress=False)
    with pytest.raises(ValueError, match="unknown"):
        score(warm, cool, metrics=("fid", "lpips"), progress=False)


def test_clipping_and_saturation_are_scored_per_image_with_the_reference(synthetic):
    result = score(synthetic["warm"], synthetic["cool"], metrics=("clipping", "fid", "saturation"),
                   feature_extractor=EXTRACTOR, progress=False)["metrics"]
    assert list(result) == ["fid", "saturation", "reference_saturation", "clipping", "reference_clipping"]
    for key, folder in (("", "warm"), ("reference_", "cool")):
        images = [Image.open(p) for p in sorted(synthetic[folder].iterdir())]
        assert result[f"{key}clipping"] == pytest.approx(clipping(images), abs=1e-12)
        assert result[f"{key}saturation"] == pytest.approx(saturation(images), abs=1e-12)
    assert 0.01 < result["clipping"] < 0.9  # the synthetic images do clip, partly


def test_run_folder_scores_its_samples_only(tmp_path, monkeypatch, capsys):
    from apg.evaluation import generation

    monkeypatch.setattr(generation, "apply_guidance", helpers.fake_guide)
    run = tmp_path / "run"
    generation.generate(helpers.FakePipeline(), apg.CFG(2.0), run, num_images=5,
                        classes=list(helpers.CLASSES), num_inference_steps=2, progress=False)
    samples = [Image.open(p) for p in sorted(run.glob("0*.png"))]
    Image.new("RGB", (300, 100), "white").save(run / "grid.png")  # a picture of the run, not a sample
    result = score(run, metrics=("saturation",), progress=False)
    assert result["images"]["count"] == 5 and result["images"]["ignored"] == ["grid.png"]
    assert result["metrics"]["saturation"] == pytest.approx(saturation(samples), abs=1e-12)
    assert cli_main(["score", str(run), "--no-cache"]) == 0  # without a reference: saturation and clipping
    assert "scored the 5 samples of the run folder; left out grid.png" in capsys.readouterr().err
    assert set(json.loads((run / "score.json").read_text())["metrics"]) == {"saturation", "clipping"}
    (run / "000003.png").unlink()
    with pytest.raises(ValueError, match="is incomplete: 1 of its 5 samples are missing \\(000003.png\\); finish"):
        score(run, metrics=("saturation",), progress=False)
    # In a plain folder every image counts, and one of another size is named with how to leave it out.
    plain = tmp_path / "plain"
    shutil.copytree(run, plain, ignore=shutil.ignore_patterns("run.json"))
    with pytest.raises(ValueError, match="image grid.png is 300x100 .* move grid.png out of it"):
        score(plain, metrics=("saturation",), progress=False)


def test_wrong_size_and_corrupt_images_are_named(synthetic, tmp_path):
    warm, cool = synthetic["warm"], synthetic["cool"]
    small = tmp_path / "small"
    small.mkdir()
    for path in sorted(cool.iterdir())[:10]:
        Image.open(path).resize((16, 16)).save(small / f"{path.stem}.png")
    with pytest.raises(ValueError, match="has images of 16x16 but the scored images are 32x32; expected a reference"):
        score(warm, small, metrics=("fid",), feature_extractor=EXTRACTOR, progress=False)
    resized = score(warm, small, metrics=("fid",), feature_extractor=EXTRACTOR, resize=16, progress=False)
    assert resized["images"]["size"] == [16, 16] and np.isfinite(resized["metrics"]["fid"])

    broken = tmp_path / "broken"
    shutil.copytree(cool, broken)
    victim = sorted(broken.iterdir())[17]
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated PNG
    with pytest.raises(ValueError, match=f"cannot read image {victim.name} in folder"):
        score(broken, warm, metrics=("saturation",), progress=False)
    victim.unlink()
    Image.new("RGB", (33, 32)).save(broken / "odd.png")
    with pytest.raises(ValueError, match="image odd.png is 33x32 but the images of folder .* are 32x32"):
        score(broken, warm, metrics=("fid",), feature_extractor=EXTRACTOR, progress=False)


def test_missing_weights_offline_give_one_clear_error(synthetic, monkeypatch, tmp_path, capfd):
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    warm, cool = synthetic["warm"], synthetic["cool"]

    def offline(url, *args, **kwargs):
        print(f'Downloading: "{url}" to /somewhere')  # what torch.hub prints before it fails
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(inception, "load_state_dict_from_url", offline)
    capfd.readouterr()
    with pytest.raises(FeatureWeightsError) as error:
        score(warm, cool, metrics=("fid",), progress=False)
    message = str(error.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and inception.URL_INCEPTION_V3 in message
    assert "--feature-weights PATH" in message and "feature_weights=PATH" in message
    assert "Downloading" not in "".join(capfd.readouterr())  # the error is the only word on it
    with pytest.raises(ValueError, match="feature_weights .*missing.pth' is not a file"):
        score(warm, cool, metrics=("fid",), feature_weights=tmp_path / "missing.pth", progress=False)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FeatureWeightsError, match=f"feature_weights '{garbage}' does not load as the weights of the "
                                                  "inception-v3-compat feature extractor"):
        score(warm, cool, metrics=("fid",), feature_weights=garbage, progress=False)
    # FID (InceptionV3) and precision/recall (VGG16) need one weights file each, named.
    with pytest.raises(ValueError, match=r"use 2 feature extractors \(inception-v3-compat, vgg16\)"):
        score(warm, cool, metrics=("fid", "prc"), feature_weights=tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"names \['vgg16'\], but these metrics use \['inception-v3-compat'\]"):
        score(warm, cool, metrics=("fid",), feature_weights={"vgg16": tmp_path / "w.pth"})
    # The command line names the path it was given.
    code = cli_main(["score", str(warm), "--reference", str(cool), "--metrics", "fid", "--no-cache",
                     "--feature-weights", str(tmp_path / "nowhere.pth")])
    err = capfd.readouterr().err
    assert code == 2 and f"--feature-weights {tmp_path / 'nowhere.pth'}: no such file" in err, err


def test_cli_score_writes_json_and_reports_errors(synthetic, tmp_path, capsys):
    warm, cool = synthetic["warm"], synthetic["cool"]
    out = tmp_path / "score.json"
    code = cli_main(["score", str(warm), "--reference", str(cool), "--metrics", "fid", "saturation",
                     "--feature-extractor", EXTRACTOR, "--output", str(out), "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    result = json.loads(out.read_text())
    direct = score(warm, cool, metrics=("fid",), feature_extractor=EXTRACTOR, progress=False)
    assert result["metrics"]["fid"] == pytest.approx(direct["metrics"]["fid"], rel=1e-12)
    assert result["feature_extractors"]["fid"] == {"extractor": EXTRACTOR, "layer": "pool"}
    assert result["versions"]["torch-fidelity"] == torch_fidelity.__version__
    stats = tmp_path / "cool.npz"
    assert cli_main(["stats", str(cool), str(stats), "--feature-extractor", EXTRACTOR]) == 0
    assert cli_main(["score", str(warm), "--reference", str(stats), "--metrics", "fid", "--no-cache",
                     "--feature-extractor", EXTRACTOR, "--output", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["fid"] == pytest.approx(direct["metrics"]["fid"], rel=1e-12)
    code = cli_main(["score", str(warm), "--reference", str(tmp_path / "nowhere"), "--no-cache"])
    assert code == 2 and "nowhere" in capsys.readouterr().err
