"""Sweeps over guidance scales, methods and sigma intervals (CSV, plot, labelled sample grid), and reports."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .._fonts import font as _font
from ..errors import InputError
from ..guidance import METHODS
from ..setting import Setting
from .files import atomic_open, list_images, process_state, read_json, save_png, versions, write_json, write_text
from .generation import generate, read_image_metadata
from .scoring import check_metrics, score

__all__ = ["sweep", "plan", "plot_sweep", "sample_grid", "collect_scores", "write_report", "setting_label",
           "SCORE_FILE"]

SCORE_FILE = "score.json"
# Report columns after the method, the scale and the parameters of every registered method.
COLUMNS = ("interval", "num_images", "num_inference_steps", "model", "saturation", "reference_saturation",
           "clipping", "reference_clipping", "fid", "kid_mean", "kid_std", "isc_mean", "isc_std", "precision",
           "recall", "f_score", "clip_score", "clip_score_std")
# (metric, axis label) of the per-scale panels of sweep.png.
PANELS = (("saturation", "saturation (mean HSV S)"), ("clipping", "clipping (fraction at 0 or 255)"),
          ("fid", "FID"))


def _setting_fields(guidance) -> dict:
    """The row's setting from a run.json guidance record (apg.Setting.from_dict); empty for images not generated."""
    if guidance is None:  # a scored folder of other images (a reference)
        return {"method": None, "guidance_scale": None, "interval": None, "setting": ""}
    setting = Setting.from_dict(guidance)
    return {"method": setting.method, "guidance_scale": setting.scale, **setting.params,
            "interval": None if setting.interval is None else ",".join(f"{v:g}" for v in setting.interval),
            "setting": setting.label(scale=False)}


def _row(result: dict, path) -> dict:
    """One report row from a score() result and the run.json it carries."""
    run = result.get("run") or {}
    row = {"run": str(path), **_setting_fields(run.get("guidance")), "num_images": result["images"]["count"],
           "num_inference_steps": run.get("num_inference_steps"), "model": run.get("model")}
    row.update(result["metrics"])
    return row


def setting_label(row: dict) -> str:
    """'APG η=0 r=2.5 β=-0.75 σ∈(0.28, 5.42]': a row's method with its settings, without the scale."""
    return row["setting"]


def _fields(rows: list[dict]) -> list[str]:
    """The columns some row has: the setting first (read from apg.METHODS now: a rule registered late counts)."""
    parameters = dict.fromkeys(p.name for cls in METHODS.values() for p in cls.parameters)
    columns = ("method", "guidance_scale", *parameters, *COLUMNS)
    return ["run"] + [c for c in columns if any(r.get(c) is not None for r in rows)]


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_fields(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot_sweep(rows: list[dict], path, title: str = ""):
    """PNG: saturation, clipping (and FID) against the scale, one line per setting; FID against saturation."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    has_fid = any(r.get("fid") is not None for r in rows)
    panels = [(k, label) for k, label in PANELS if any(r.get(k) is not None for r in rows)]
    fig = Figure(figsize=(4.6 * (len(panels) + has_fid), 4.3), layout="constrained")
    axes = fig.subplots(1, len(panels) + has_fid, squeeze=False)[0]
    settings = list(dict.fromkeys(setting_label(r) for r in rows))
    markers = dict(zip(METHODS, "os^Dvp"))
    for k, setting in enumerate(settings):
        points = sorted((r for r in rows if setting_label(r) == setting), key=lambda r: r["guidance_scale"])
        style = dict(marker=markers.get(points[0]["method"], "o"), color=f"C{k}", label=setting)
        scales = [r["guidance_scale"] for r in points]
        for ax, (key, _) in zip(axes, panels):
            ax.plot(scales, [r.get(key) for r in points], **style)
        if has_fid:  # the trade-off: lower-left is better
            axes[-1].plot([r["saturation"] for r in points], [r["fid"] for r in points], **style)
            for r in points:
                axes[-1].annotate(f"w={r['guidance_scale']:g}", (r["saturation"], r["fid"]), fontsize=7,
                                  xytext=(3, 3), textcoords="offset points", color=style["color"])
    for ax, (key, label) in zip(axes, panels):
        ax.set(xlabel="guidance scale w", ylabel=label, title=f"{label.split(' (')[0]} vs scale")
        ax.grid(alpha=0.3)
        reference = next((r[f"reference_{key}"] for r in rows if r.get(f"reference_{key}") is not None), None)
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="reference data")
    if has_fid:
        axes[-1].set(xlabel="saturation", ylabel="FID", title="FID vs saturation")
        axes[-1].grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_open(path) as file:
        fig.savefig(file, format="png", dpi=110)


def sample_grid(folders: dict[str, Path], path, count: int = 8, min_size: int = 96):
    """PNG grid: one row per setting, labelled with it; the first `count` samples, a column per seed.

    `folders` maps a row label to a generated folder; the column headers (seed and condition) come from
    the first folder's PNG metadata, the same in every row of a sweep.
    """
    from PIL import Image, ImageDraw

    files = {label: list_images(folder)[:count] for label, folder in folders.items()}
    rows = {label: [Image.open(p).convert("RGB") for p in paths] for label, paths in files.items()}
    width, height = next(iter(rows.values()))[0].size
    zoom = max(1, -(-min_size // max(width, height)))  # upscale tiny (CIFAR) images so a person can see them
    cell_w, cell_h, gap = width * zoom, height * zoom, 4
    font, small = _font(13), _font(11)
    headers = []
    for p in next(iter(files.values())):
        try:
            meta = read_image_metadata(p)
            condition = meta.get("class", meta.get("prompt", ""))
            headers.append((f"seed {meta['seed']}", str(condition)[: max(4, cell_w // 7)]))
        except ValueError:  # not written by generate
            headers.append((p.stem, ""))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = {label: label.split("\n") for label in rows}
    margin = 12 + max(measure.textlength(line, font=font) for ls in lines.values() for line in ls)
    top = 2 * 16 + 8
    grid = Image.new("RGB", (int(margin) + len(headers) * (cell_w + gap), top + len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for c, (seed, condition) in enumerate(headers):
        x = int(margin) + c * (cell_w + gap) + cell_w // 2
        draw.text((x, 4), seed, fill="black", font=small, anchor="ma")
        draw.text((x, 20), condition, fill="dimgray", font=small, anchor="ma")
    for r, (label, images) in enumerate(rows.items()):
        y = top + r * (cell_h + gap)
        for k, line in enumerate(lines[label]):
            draw.text((6, y + cell_h // 2 + (k - (len(lines[label]) - 1) / 2) * 17), line, fill="black", font=font,
                      anchor="lm")
        for c, image in enumerate(images):
            grid.paste(image.resize((cell_w, cell_h), Image.NEAREST), (int(margin) + c * (cell_w + gap), y))
    save_png(path, grid)


def _folder_name(setting: Setting) -> str:
    where = "" if setting.interval is None else f"_s{setting.interval[0]:g}-{setting.interval[1]:g}"
    return f"{setting.method}{where}_w{setting.scale:g}"


def plan(methods, scales, intervals=(None,), method_params=None) -> list[Setting]:
    """The settings of a sweep, method by method, interval by interval, scale by scale; each one checked."""
    if not methods or not scales or not intervals:
        raise InputError(f"methods, scales and intervals must be non-empty, got {methods!r}, {scales!r} and "
                         f"{intervals!r}")
    return [Setting.from_options(m, w, interval=i, **(method_params or {}).get(m, {}))
            for m in methods for i in intervals for w in scales]


def sweep(pipe, out_dir, *, methods=("cfg", "apg"), scales=(1.0, 2.0, 4.0, 8.0), method_params=None,
          intervals=(None,), num_images=64, classes=None, prompts=None, seed=0, batch_size=16,
          num_inference_steps=32, reference=None, metrics=None, score_options=None, model="unknown", grid_count=8,
          progress=True) -> list[dict]:
    """Generate and score every (method, interval, scale); write sweep.csv, sweep.png, grid.png and sweep.json.

    Every setting uses the same seeds, so the methods see identical noise. `method_params` maps a method to
    its parameters (or {"preset": name}); `intervals`: sigma intervals (low, high), None for every step.
    `score_options` go to `score` (feature_extractor, feature_weights, cache_dir, ...).
    """
    out_dir = Path(out_dir)
    method_params = method_params or {}
    # All checked before any work: a bad setting or metric fails before the first image.
    settings = plan(methods, scales, intervals, method_params)
    metrics = check_metrics(metrics or (("saturation", "clipping", "fid") if reference is not None
                                        else ("saturation", "clipping")), reference)
    rows, folders = [], {}
    for setting in settings:
        folder = out_dir / _folder_name(setting)
        generate(pipe, setting, folder, num_images=num_images, classes=classes, prompts=prompts, seed=seed,
                 batch_size=batch_size, num_inference_steps=num_inference_steps, model=model, progress=progress)
        result = score(folder, reference, metrics=metrics, progress=progress, **(score_options or {}))
        if process_state().is_main_process:
            write_json(folder / SCORE_FILE, result)
        rows.append(_row(result, folder))
        folders[rows[-1]["run"]] = (folder, setting)
    if process_state().is_main_process:
        write_text(out_dir / "sweep.csv", _csv(rows))
        title = f"{model}: {num_images} images/setting, {num_inference_steps} steps, seed {seed}"
        plot_sweep(rows, out_dir / "sweep.png", title)
        # Grid rows by scale, then setting: the methods at one scale sit next to each other.
        by_scale = sorted(rows, key=lambda r: r["guidance_scale"])
        grid = {}
        for r in by_scale:
            folder, setting = folders[r["run"]]
            grid[f"{setting.cls.label} w={setting.scale:g}\n{setting.describe()}".strip()] = folder
        sample_grid(grid, out_dir / "grid.png", count=min(grid_count, num_images))
        write_json(out_dir / "sweep.json", {
            "rows": rows, "methods": list(methods), "scales": list(scales), "method_params": method_params,
            "intervals": [None if i is None else [float(v) for v in i] for i in intervals], "versions": versions()})
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
            raise InputError(f"report input {str(path)!r} is neither a score file nor a folder")
    if not files:
        raise InputError(f"no {SCORE_FILE} found in {[str(p) for p in paths]}")
    rows = []
    for file in files:
        try:
            result = read_json(file)
            rows.append(_row(result, file.parent))
        except (json.JSONDecodeError, KeyError) as error:
            raise InputError(f"{file} is not a score file written by apg-eval ({error})") from error
        except InputError as error:  # a guidance record of a rule not registered now
            raise InputError(f"{file}: {error}") from None
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
