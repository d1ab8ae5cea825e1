"""Sweeps over guidance scales and methods (CSV, plot, sample grid) and reports that collect runs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .files import atomic_open, list_images, process_state, read_json, save_png, versions, write_json, write_text
from .scoring import score
from .generation import generate, make_guidance

__all__ = ["sweep", "plot_sweep", "sample_grid", "collect_scores", "write_report", "SCORE_FILE"]

SCORE_FILE = "score.json"
# Report columns: setting first, then every metric score() can produce.
COLUMNS = ("method", "guidance_scale", "eta", "norm_threshold", "momentum", "num_images", "num_inference_steps",
           "model", "saturation", "reference_saturation", "fid", "kid_mean", "kid_std", "isc_mean", "isc_std",
           "precision", "recall", "f_score", "clip_score", "clip_score_std")
METHOD_NAMES = {"CFG": "cfg", "APG": "apg", "MomentumCFG": "mcfg"}


def _row(result: dict, path) -> dict:
    """One report row from a score() result (and the run.json it carries)."""
    run = result.get("run") or {}
    guidance = run.get("guidance") or {}
    row = {"run": str(path), "method": METHOD_NAMES.get(guidance.get("type"), guidance.get("type")),
           "guidance_scale": guidance.get("guidance_scale"), "eta": guidance.get("eta"),
           "norm_threshold": guidance.get("norm_threshold"), "momentum": guidance.get("momentum"),
           "num_images": result["images"]["count"], "num_inference_steps": run.get("num_inference_steps"),
           "model": run.get("model")}
    row.update(result["metrics"])
    return row


def _fields(rows: list[dict]) -> list[str]:
    return ["run"] + [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_fields(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot_sweep(rows: list[dict], path, title: str = ""):
    """PNG: FID and saturation against the scale, one line per method, and FID against saturation."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    has_fid = any(r.get("fid") is not None for r in rows)
    panels = [("saturation", "saturation (mean HSV S)")] + ([("fid", "FID")] if has_fid else [])
    fig = Figure(figsize=(4.6 * (len(panels) + has_fid), 3.9), layout="constrained")
    axes = fig.subplots(1, len(panels) + has_fid, squeeze=False)[0]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    styles = {"cfg": ("tab:red", "o"), "apg": ("tab:blue", "s"), "mcfg": ("tab:green", "^")}
    for method in methods:
        points = sorted((r for r in rows if r["method"] == method), key=lambda r: r["guidance_scale"])
        color, marker = styles.get(method, (None, "o"))
        label = {"cfg": "CFG", "apg": "APG", "mcfg": "momentum CFG"}.get(method, method)
        scales = [r["guidance_scale"] for r in points]
        for ax, (key, _) in zip(axes, panels):
            ax.plot(scales, [r[key] for r in points], marker=marker, color=color, label=label)
        if has_fid:  # the trade-off: lower-left is better
            axes[-1].plot([r["saturation"] for r in points], [r["fid"] for r in points], marker=marker,
                          color=color, label=label)
            for r in points:
                axes[-1].annotate(f"w={r['guidance_scale']:g}", (r["saturation"], r["fid"]), fontsize=7,
                                  xytext=(3, 3), textcoords="offset points", color=color)
    reference = next((r.get("reference_saturation") for r in rows if r.get("reference_saturation")), None)
    for ax, (key, label) in zip(axes, panels):
        ax.set(xlabel="guidance scale w", ylabel=label, title=f"{label} vs scale")
        ax.grid(alpha=0.3)
        if key == "saturation" and reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="reference data")
        ax.legend(fontsize=8)
    if has_fid:
        axes[-1].set(xlabel="saturation", ylabel="FID", title="FID vs saturation")
        axes[-1].grid(alpha=0.3)
        axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_open(path) as file:
        fig.savefig(file, format="png", dpi=110)


def sample_grid(folders: dict[str, Path], path, count: int = 8, min_size: int = 96):
    """PNG grid: one labelled row per setting, the first `count` images (same seeds along a column)."""
    from PIL import Image, ImageDraw

    rows = {label: [Image.open(p).convert("RGB") for p in list_images(folder)[:count]]
            for label, folder in folders.items()}
    width, height = next(iter(rows.values()))[0].size
    zoom = max(1, -(-min_size // max(width, height)))  # upscale tiny (CIFAR) images so a person can see them
    cell_w, cell_h, gap, margin = width * zoom, height * zoom, 4, 110
    grid = Image.new("RGB", (margin + count * (cell_w + gap), len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows.items()):
        top = r * (cell_h + gap)
        draw.text((6, top + cell_h // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
            grid.paste(image.resize((cell_w, cell_h), Image.NEAREST), (margin + c * (cell_w + gap), top))
    save_png(path, grid)


def sweep(pipe, out_dir, *, methods=("cfg", "apg"), scales=(1.0, 2.0, 4.0, 8.0), method_params=None,
          num_images=64, classes=None, prompts=None, seed=0, batch_size=16, num_inference_steps=32,
          reference=None, metrics=None, score_options=None, model="unknown", grid_count=8,
          progress=True) -> list[dict]:
    """Generate and score every (method, scale); write sweep.csv, sweep.png, grid.png and sweep.json.

    Every setting uses the same seeds, so the methods see identical noise. `score_options` go to `score`
    (feature_extractor, feature_weights, cache_dir, ...); `method_params` maps a method to its parameters.
    """
    out_dir = Path(out_dir)
    method_params = method_params or {}
    if not methods or not scales:
        raise ValueError(f"methods and scales must be non-empty, got {methods!r} and {scales!r}")
    metrics = metrics or (("saturation", "fid") if reference is not None else ("saturation",))
    rows, folders = [], {}
    for method in methods:
        for scale in scales:
            guidance = make_guidance(method, float(scale), **method_params.get(method, {}))
            folder = out_dir / f"{method}_w{float(scale):g}"
            generate(pipe, guidance, folder, num_images=num_images, classes=classes, prompts=prompts, seed=seed,
                     batch_size=batch_size, num_inference_steps=num_inference_steps, model=model, progress=progress)
            result = score(folder, reference, metrics=metrics, progress=progress, **(score_options or {}))
            if process_state().is_main_process:
                write_json(folder / SCORE_FILE, result)
            rows.append(_row(result, folder))
            folders[f"{method} w={float(scale):g}"] = folder
    if process_state().is_main_process:
        write_text(out_dir / "sweep.csv", _csv(rows))
        title = f"{model}: {num_images} images/setting, {num_inference_steps} steps, seed {seed}"
        plot_sweep(rows, out_dir / "sweep.png", title)
        sample_grid(folders, out_dir / "grid.png", count=min(grid_count, num_images))
        write_json(out_dir / "sweep.json", {"rows": rows, "methods": list(methods), "scales": list(scales),
                                             "method_params": method_params, "versions": versions()})
    return rows


def collect_scores(paths) -> list[dict]:
    """Report rows from score.json files, or folders searched recursively for them."""
    files = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(path.rglob(SCORE_FILE)))
        else:
            raise ValueError(f"report input {str(path)!r} is neither a score file nor a folder")
    if not files:
        raise ValueError(f"no {SCORE_FILE} found in {[str(p) for p in paths]}")
    rows = []
    for file in files:
        try:
            result = read_json(file)
            rows.append(_row(result, file.parent))
        except (json.JSONDecodeError, KeyError) as error:
            raise ValueError(f"{file} is not a score file written by apg-eval ({error})") from error
    return sorted(rows, key=lambda r: (str(r["model"]), str(r["method"]), r["guidance_scale"] or 0.0, r["run"]))


def write_report(rows: list[dict], path=None) -> str:
    """CSV of the rows (written atomically to `path` if given); returns a Markdown table for the terminal."""
    if path is not None:
        write_text(path, _csv(rows))
    fields = _fields(rows)
    fmt = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(fmt(r.get(f)) for f in fields) + " |" for r in rows]
    return "\n".join(lines)
