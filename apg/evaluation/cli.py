"""apg eval (also apg-eval): generate, score, stats, sweep, report. Run under `accelerate launch` to use several
processes.

Lists are space-separated (--scales 1 2 4 8, --methods cfg apg); methods and their options come from
apg.METHODS, as in `apg compare`. Every value is checked before a model loads or an image is made; an error
is one line with exit code 2 (docs/cli.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import _options
from .._options import CommandError, at_least, listed
from .files import process_state

PROG = "apg-eval"  # the name as its own script; `apg eval` passes its own


def _metric_option(p, default: str):
    from .scoring import METRICS

    p.add_argument("--metrics", nargs="+", type=listed(str, "a metric name"), choices=list(METRICS),
                   metavar="METRIC", help=f"space-separated, of: {', '.join(METRICS)} (prc: precision/recall; "
                                          f"clipping: fraction of channel values at 0 or 255; clip: CLIP score); "
                                          f"default {default}")


def _add_model(p, out_required=True):
    p.add_argument("--model", default="builtin", help="'builtin' (offline CIFAR-10 model), a hub id or a folder")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--classes", nargs="+", type=listed(str, "a class name or id"),
                      help="class names or ids, space-separated; 'all' (the default) for every class")
    cond.add_argument("--prompts-file", type=Path, help="text file, one prompt per line (text-to-image models)")
    p.add_argument("--num-images", type=at_least(1), required=True, help="images per setting (N)")
    p.add_argument("--seed", type=_options.seed, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="images per pipeline call")
    p.add_argument("--steps", type=at_least(1), default=32, help="num_inference_steps")
    _options.add_runtime_options(p, "this process's accelerate device: cuda if available, else cpu")
    p.add_argument("--out", type=Path, required=out_required,
                   help="output folder" + ("" if out_required else " (default: runs/sweep-MODEL-HASH, named after "
                                                                   "the settings and printed; the same command "
                                                                   "resumes there)"))


def _interval_or_none(text):
    """An item of --intervals: 'none' (every step) or what --interval takes."""
    return None if text == "none" else _options.parse_interval(text)


def _add_scoring(p):
    p.add_argument("--reference",
                   help="folder of images, tar archive (a.tar.gz#sub/folder/), statistics .npz, or a registered "
                        "torch-fidelity dataset name (e.g. cifar10-train; downloads)")
    p.add_argument("--feature-extractor", help="torch-fidelity extractor for all metrics "
                                               "(default: inception-v3-compat; vgg16 for prc)")
    p.add_argument("--feature-weights", action="append", metavar="[NAME=]PATH",
                   help="local weights file of the feature extractor (offline use); with several extractors "
                        "(fid and prc), NAME=PATH once per extractor")
    p.add_argument("--resize", type=at_least(1), help="resize and centre-crop both sets to this size first")
    p.add_argument("--feature-batch-size", type=at_least(1), default=64, help="images per feature-extractor batch")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default: $APG_CACHE or ~/.cache/apg/eval)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--clip-model", help="CLIP model id or folder for the clip metric "
                                        "(default: openai/clip-vit-large-patch14)")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _options.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_options.ArgumentParser)

    p = sub.add_parser("generate", help="generate N images with one guidance setting (resumable)")
    _add_model(p)
    p.add_argument("--scale", type=float, required=True, help="guidance scale w")
    _options.add_guidance_options(p, several=False, default="apg")

    p = sub.add_parser("score", help="score a folder of images against a reference, written to JSON")
    p.add_argument("images", help="folder of images (a run folder: its samples), or an archive")
    _metric_option(p, "saturation clipping, plus fid with a --reference")
    _add_scoring(p)
    p.add_argument("--output", type=Path, help="JSON file (default: IMAGES/score.json; needed for an archive)")

    p = sub.add_parser("stats", help="save FID statistics of a reference to an .npz file")
    p.add_argument("reference", help="folder of images, tar archive or registered dataset name")
    p.add_argument("output", type=Path, help=".npz file to write")
    p.add_argument("--feature-extractor", default="inception-v3-compat", help="torch-fidelity extractor")
    p.add_argument("--feature-weights", type=Path, metavar="PATH",
                   help="local weights file of the feature extractor (offline use)")
    p.add_argument("--resize", type=at_least(1), help="resize and centre-crop to this size first")
    p.add_argument("--feature-batch-size", type=at_least(1), default=64, help="images per feature-extractor batch")

    p = sub.add_parser("sweep", help="methods x intervals x scales: CSV, plot and sample grid")
    _add_model(p, out_required=False)
    p.add_argument("--scales", nargs="+", type=listed(float, "a number"), default=[1.0, 2.0, 4.0, 8.0],
                   help="guidance scales, space-separated")
    _options.add_guidance_options(p, several=True)
    p.add_argument("--intervals", nargs="+", type=_interval_or_none, metavar="INTERVAL",
                   help="sigma intervals as a dimension of the sweep (every method with each): none (every step), "
                        "LOW,HIGH, or a name of apg.INTERVALS; e.g. --intervals none sdxl")
    _metric_option(p, "saturation clipping, plus fid with a --reference")
    _add_scoring(p)

    p = sub.add_parser("report", help="collect score.json files into one table")
    p.add_argument("paths", nargs="+", type=Path, help="score.json files or folders to search")
    p.add_argument("--output", type=Path, help="CSV file to write")
    for command in sub.choices.values():
        _options.add_traceback_option(command)
    return parser


def _prompts(args) -> list[str] | None:
    """The prompts of --prompts-file, read before any model loads."""
    if args.prompts_file is None:
        return None
    try:
        text = args.prompts_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"--prompts-file {str(args.prompts_file)!r}: cannot read it "
                           f"({getattr(error, 'strerror', None) or error})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise CommandError(f"--prompts-file {str(args.prompts_file)!r} holds no prompt (one per line)")
    return prompts


def _check_model_args(args) -> list[str] | None:
    """What every generating command checks before it loads a model: device, output folder, prompts."""
    _options.check_runtime_options(args)
    if args.out is not None:
        _options.output_folder("--out", args.out)
    return _prompts(args)


def _pipeline(args, prompts):
    from .generation import load_pipeline

    # --device, else accelerate's device (one per process); apg.runtime's dtype policy when --dtype is not given.
    pipe = load_pipeline(args.model, device=args.device or process_state().device, dtype=args.dtype)
    if prompts is not None:
        return pipe, None, prompts
    classes = args.classes or ["all"]
    if classes == ["all"]:
        if not hasattr(pipe, "labels"):
            raise CommandError(f"--classes all: the {type(pipe).__name__} pipeline has no class names; "
                               "pass --classes or --prompts-file")
        first_name = {}
        for name, label in pipe.labels.items():  # DiT lists several synonyms per label id
            first_name.setdefault(label, name)
        ids = sorted(first_name)
        # Names when they identify their class (readable metadata), ids otherwise (ImageNet has two "crane"s).
        classes = [first_name[i] for i in ids] if all(pipe.labels[first_name[i]] == i for i in ids) else ids
        return pipe, classes, None
    classes = [int(c) if c.isdigit() else c for c in classes]
    return pipe, classes, None


def _check_file(option, path):
    if not Path(path).is_file():
        raise CommandError(f"{option} {path}: no such file")


def _scoring(args) -> dict:
    from .features import default_cache_dir

    weights = None
    if args.feature_weights:
        pairs = [entry.partition("=") if "=" in entry else ("", "", entry) for entry in args.feature_weights]
        for _, _, path in pairs:
            _check_file("--feature-weights", path)
        weights = pairs[0][2] if len(pairs) == 1 and not pairs[0][0] else {name: path for name, _, path in pairs}
        if isinstance(weights, dict) and "" in weights:
            raise CommandError("--feature-weights: with several files, name each one's extractor: NAME=PATH")
    return {"feature_extractor": args.feature_extractor, "feature_weights": weights,
            "resize": args.resize, "batch_size": args.feature_batch_size, "clip_model": args.clip_model,
            "cache_dir": None if args.no_cache else (args.cache_dir or default_cache_dir())}


def _default_sweep_dir(args) -> Path:
    """runs/sweep-MODEL-HASH: one folder per set of generation settings, so a rerun resumes where it stopped."""
    import hashlib
    import json

    # What makes the images: not the scoring options, nor the batch size (the images do not depend on it). A
    # --device left out is left out of the hash too, so the folders of runs from before it existed still resume.
    ignored = {"command", "out", "batch_size", "metrics", "reference", "resize", "no_cache", "cache_dir", "clip_model",
               "traceback", "prog"}
    settings = {k: v for k, v in vars(args).items() if k not in ignored and not k.startswith("feature")
                and not (k == "device" and v is None)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    model = Path(args.model).name if Path(args.model).exists() else args.model.replace("/", "-")
    return Path("runs") / f"sweep-{model}-{digest}"


def _generate(args, state):
    from .generation import generate

    _options.check_guidance_options(args, [args.method])
    setting = _options.setting(args, args.method, args.scale)
    pipe, classes, prompts = _pipeline(args, _check_model_args(args))
    done = generate(pipe, setting, args.out, num_images=args.num_images, classes=classes, prompts=prompts,
                    seed=args.seed, batch_size=args.batch_size, num_inference_steps=args.steps, model=args.model)
    if state.is_main_process:
        if done["missing"] == 0:
            print(f"{args.prog} generate: {args.out} is already complete ({args.num_images} images)")
        else:
            print(f"{args.out}: {args.num_images} images ({done['missing']} made by this run)")


def _score(args, state):
    from .files import write_json
    from .scoring import score

    metrics = args.metrics or (("fid",) if args.reference else ()) + ("saturation", "clipping")
    if args.output is None and not Path(args.images).is_dir():  # an archive: never write beside or into it
        raise CommandError(f"--output is needed: {args.images!r} is not a folder to write score.json into")
    output = _options.output_file("--output", args.output or Path(args.images) / "score.json")
    result = score(args.images, args.reference, metrics=metrics, **_scoring(args))
    if state.is_main_process:
        ignored = result["images"]["ignored"]
        if ignored:
            print(f"{args.prog} score: scored the {result['images']['count']} samples of the run folder; left out "
                  f"{', '.join(ignored)}", file=sys.stderr)
        with _options.writing("--output", output):
            write_json(output, result)
        print(f"{output}: {result['metrics']}")


def _stats(args, state):
    from .features import save_reference_statistics

    if args.feature_weights is not None:
        _check_file("--feature-weights", args.feature_weights)
    _options.output_file("output", args.output)
    meta = save_reference_statistics(args.reference, args.output, feature_extractor=args.feature_extractor,
                                     feature_weights=args.feature_weights, resize=args.resize,
                                     batch_size=args.feature_batch_size)
    if state.is_main_process:
        print(f"{args.output}: {meta['count']} images, {meta['extractor']} layer {meta['layer']}")


def _sweep(args, state):
    from .scoring import check_metrics
    from .sweeps import plan, sweep, write_report

    _options.check_guidance_options(args, args.methods)
    if args.interval is not None and args.intervals is not None:
        raise CommandError("give --interval (one for every setting) or --intervals (a dimension), not both")
    # Each method's parameters as the shared options resolve them (defaults, preset, bounds checked), then every
    # setting of the sweep and the metrics: all refused before the model loads.
    method_params = {m: dict(_options.setting(args, m, 1.0).params) for m in args.methods}
    intervals = args.intervals or [args.interval]
    plan(args.methods, args.scales, intervals, method_params)
    if args.metrics is not None:
        check_metrics(args.metrics, args.reference)
    scoring = _scoring(args)
    if args.out is None:
        args.out = _default_sweep_dir(args)
        if state.is_main_process:
            print(f"{args.prog} sweep: writing to {args.out} (no --out given; the same command resumes there)")
    pipe, classes, prompts = _pipeline(args, _check_model_args(args))
    rows = sweep(pipe, args.out, methods=args.methods, scales=args.scales, method_params=method_params,
                 intervals=intervals, num_images=args.num_images, classes=classes,
                 prompts=prompts, seed=args.seed, batch_size=args.batch_size, num_inference_steps=args.steps,
                 reference=args.reference, metrics=args.metrics, model=args.model, score_options=scoring)
    if state.is_main_process:
        print(write_report(rows))


def _report(args, state):
    from .sweeps import collect_scores, write_report

    if args.output is not None:
        _options.output_file("--output", args.output)
    rows = collect_scores(args.paths)
    with _options.writing("--output", args.output):
        print(write_report(rows, args.output))


COMMANDS = {"generate": _generate, "score": _score, "stats": _stats, "sweep": _sweep, "report": _report}


def main(argv=None, prog: str = PROG) -> int:
    """`apg-eval ...` (or `apg eval ...`, with prog="apg eval"); an apg.errors.ApgError is one line, exit code 2."""
    args = build_parser(prog).parse_args(argv)
    args.prog = prog
    return _options.run_guarded(f"{prog} {args.command}", lambda: COMMANDS[args.command](args, process_state()),
                                args.traceback)


if __name__ == "__main__":
    sys.exit(main())
