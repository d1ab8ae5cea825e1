"""apg-eval: generate, score, stats, sweep, report. Run under `accelerate launch` to use several processes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .files import process_state



def _metrics_help(default: str) -> str:
    from .scoring import METRICS

    return (f"space-separated, of: {', '.join(METRICS)} (prc: precision/recall, clipping: fraction of channel "
            f"values at 0 or 255, clip: CLIP score); default {default}")


def _metric_names():
    from .scoring import METRICS

    return list(METRICS)


def _add_model(p, out_required=True):
    p.add_argument("--model", default="builtin", help="'builtin' (offline CIFAR-10 model), a hub id or a folder")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--classes", nargs="+", help="class names or ids, space-separated; 'all' for every class "
                                                   "(the default)")
    cond.add_argument("--prompts-file", type=Path, help="text file, one prompt per line (text-to-image models)")
    p.add_argument("--num-images", type=int, required=True, help="images per setting (N)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=32, help="num_inference_steps")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="default float16 on CUDA, float32 on CPU")
    p.add_argument("--out", type=Path, required=out_required,
                   help="output folder" + ("" if out_required else " (default: runs/sweep-MODEL-HASH of the settings, "
                                                                   "printed; the same command resumes there)"))


def _parameters() -> dict:
    """{parameter name: (Param, [methods taking it])} over apg.METHODS, in registry order."""
    from ..guidance import METHODS

    params = {}
    for method, cls in METHODS.items():
        for param in cls.parameters:
            params.setdefault(param.name, (param, []))[1].append(method)
    return params


def _interval(text):
    """'none', a name of apg.INTERVALS, or LOW,HIGH (sigma; HIGH may be inf)."""
    from ..guidance import INTERVALS

    if text == "none":
        return None
    if text in INTERVALS:
        return tuple(INTERVALS[text])
    low, comma, high = text.partition(",")
    try:
        if not comma:
            raise ValueError
        return float(low), float(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (sigma, e.g. 0.28,5.42), none or one of "
                                         f"{', '.join(INTERVALS)}; got {text!r}") from None


def _add_guidance_options(p, several):
    from ..guidance import METHODS, PRESETS

    names = ", ".join(f"{name} ({cls.label})" for name, cls in METHODS.items())
    if several:
        p.add_argument("--methods", nargs="+", choices=list(METHODS), default=["cfg", "apg"], metavar="METHOD",
                       help=f"space-separated, of: {names} (default cfg apg)")
    else:
        p.add_argument("--method", choices=list(METHODS), default="apg", metavar="METHOD",
                       help=f"{names} (default apg)")
    for name, (param, methods) in _parameters().items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"guidance_{name}", type=param.kind,
                       metavar=name.upper(), help=f"{', '.join(methods)}: {param.help}")
    p.add_argument("--preset", choices=list(PRESETS), help="APG: the paper's eta, r and beta")
    p.add_argument("--interval", type=_interval, metavar="LOW,HIGH",
                   help="guide only where LOW < sigma <= HIGH (EDM noise level; a name of apg.INTERVALS, e.g. "
                        "sdxl); default every step")


def _add_scoring(p):
    p.add_argument("--reference",
                   help="folder of images, tar archive (a.tar.gz#sub/folder/), statistics .npz, or a registered "
                        "torch-fidelity dataset name (e.g. cifar10-train; downloads)")
    p.add_argument("--feature-extractor", help="torch-fidelity extractor for all metrics "
                                               "(default inception-v3-compat; vgg16 for prc)")
    p.add_argument("--feature-weights", action="append", metavar="[NAME=]PATH",
                   help="local weights file of the feature extractor (offline use); with several extractors "
                        "(fid and prc), NAME=PATH once per extractor")
    p.add_argument("--resize", type=int, help="resize and centre-crop both sets to this size first")
    p.add_argument("--feature-batch-size", type=int, default=64)
    p.add_argument("--cache-dir", type=Path, help="feature cache (default $APG_CACHE or ~/.cache/apg/eval)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--clip-model", help="CLIP model id or folder for the clip metric "
                                        "(default openai/clip-vit-large-patch14)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apg-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate N images with one guidance setting (resumable)")
    _add_model(p)
    p.add_argument("--scale", type=float, required=True, help="guidance scale w")
    _add_guidance_options(p, several=False)

    p = sub.add_parser("score", help="score a folder of images against a reference, written to JSON")
    p.add_argument("images", help="folder of images (or an archive)")
    p.add_argument("--metrics", nargs="+", choices=_metric_names(), metavar="METRIC",
                   help=_metrics_help("saturation clipping, plus fid with a --reference"))
    _add_scoring(p)
    p.add_argument("--output", type=Path, help="JSON file (default IMAGES/score.json)")

    p = sub.add_parser("stats", help="save FID statistics of a reference to an .npz file")
    p.add_argument("reference")
    p.add_argument("output", type=Path)
    p.add_argument("--feature-extractor", default="inception-v3-compat")
    p.add_argument("--feature-weights", type=Path, metavar="PATH",
                   help="local weights file of the feature extractor (offline use)")
    p.add_argument("--resize", type=int)
    p.add_argument("--feature-batch-size", type=int, default=64)

    p = sub.add_parser("sweep", help="methods x intervals x scales: CSV, plot and sample grid")
    _add_model(p, out_required=False)
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0],
                   help="guidance scales, space-separated (default 1 2 4 8)")
    _add_guidance_options(p, several=True)
    p.add_argument("--intervals", nargs="+", type=_interval, metavar="INTERVAL",
                   help="a dimension of the sweep: each method with each interval, space-separated, of none "
                        "(every step), LOW,HIGH or a name of apg.INTERVALS, e.g. --intervals none sdxl")
    p.add_argument("--metrics", nargs="+", choices=_metric_names(), metavar="METRIC",
                   help=_metrics_help("saturation clipping, plus fid with a --reference"))
    _add_scoring(p)

    p = sub.add_parser("report", help="collect score.json files into one table")
    p.add_argument("paths", nargs="+", type=Path, help="score.json files or folders to search")
    p.add_argument("--output", type=Path, help="CSV file to write")
    return parser


def _method_params(args, methods) -> dict:
    """{method: its parameters given on the command line (or {"preset": name})}; a stray option is an error."""
    from ..guidance import METHODS

    given = {name: getattr(args, f"guidance_{name}") for name in _parameters()
             if getattr(args, f"guidance_{name}") is not None}
    for name, (_, takers) in _parameters().items():
        if name in given and not set(takers) & set(methods):
            raise ValueError(f"--{name.replace('_', '-')} applies to {', '.join(takers)}, none of which is among "
                             f"the methods {' '.join(methods)}")
    out = {}
    for method in methods:
        out[method] = {p.name: given[p.name] for p in METHODS[method].parameters if p.name in given}
        if args.preset is not None and hasattr(METHODS[method], "from_preset"):
            out[method]["preset"] = args.preset
    return out


def _pipeline(args):
    import torch

    from .generation import load_pipeline

    device = process_state().device
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    pipe = load_pipeline(args.model, device=device, dtype=dtype)
    if args.prompts_file is not None:
        prompts = [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
        return pipe, None, prompts
    classes = args.classes or ["all"]
    if classes == ["all"]:
        if not hasattr(pipe, "labels"):
            raise ValueError(f"--classes all: the {type(pipe).__name__} pipeline has no class names; "
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
        raise ValueError(f"{option} {path}: no such file")


def _default_sweep_dir(args) -> Path:
    """runs/sweep-MODEL-HASH: one folder per set of generation settings, so a rerun resumes where it stopped."""
    import hashlib
    import json

    settings = {k: v for k, v in vars(args).items() if k not in ("command", "out", "metrics", "reference")
                and not k.startswith(("feature", "cache", "no_cache", "clip", "resize"))}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    model = Path(args.model).name if Path(args.model).exists() else args.model.replace("/", "-")
    return Path("runs") / f"sweep-{model}-{digest}"


def _scoring(args) -> dict:
    from .features import default_cache_dir

    weights = None
    if args.feature_weights:
        pairs = [entry.partition("=") if "=" in entry else ("", "", entry) for entry in args.feature_weights]
        for _, _, path in pairs:
            _check_file("--feature-weights", path)
        weights = pairs[0][2] if len(pairs) == 1 and not pairs[0][0] else {name: path for name, _, path in pairs}
        if isinstance(weights, dict) and "" in weights:
            raise ValueError("--feature-weights: with several files, name each one's extractor: NAME=PATH")
    return {"feature_extractor": args.feature_extractor, "feature_weights": weights,
            "resize": args.resize, "batch_size": args.feature_batch_size, "clip_model": args.clip_model,
            "cache_dir": None if args.no_cache else (args.cache_dir or default_cache_dir())}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    state = process_state()
    try:
        if args.command == "generate":
            from .generation import generate, make_guidance

            params = _method_params(args, [args.method])[args.method]
            guidance = make_guidance(args.method, args.scale, interval=args.interval, **params)
            pipe, classes, prompts = _pipeline(args)
            done = generate(pipe, guidance, args.out, num_images=args.num_images, classes=classes, prompts=prompts,
                            seed=args.seed, batch_size=args.batch_size, num_inference_steps=args.steps,
                            model=args.model)
            if state.is_main_process:
                if done["missing"] == 0:
                    print(f"apg-eval generate: {args.out} is already complete ({args.num_images} images)")
                else:
                    print(f"{args.out}: {args.num_images} images ({done['missing']} made by this run)")
        elif args.command == "score":
            from .files import write_json
            from .scoring import score

            metrics = args.metrics or (("fid",) if args.reference else ()) + ("saturation", "clipping")
            result = score(args.images, args.reference, metrics=metrics, **_scoring(args))
            if state.is_main_process:
                ignored = result["images"]["ignored"]
                if ignored:
                    print(f"apg-eval score: scored the {result['images']['count']} samples of the run; left out "
                          f"{', '.join(ignored)}", file=sys.stderr)
                output = args.output or Path(args.images) / "score.json"
                write_json(output, result)
                print(f"{output}: {result['metrics']}")
        elif args.command == "stats":
            from .features import save_reference_statistics

            if args.feature_weights is not None:
                _check_file("--feature-weights", args.feature_weights)
            meta = save_reference_statistics(args.reference, args.output, feature_extractor=args.feature_extractor,
                                             feature_weights=args.feature_weights, resize=args.resize,
                                             batch_size=args.feature_batch_size)
            if state.is_main_process:
                print(f"{args.output}: {meta['count']} images, {meta['extractor']} layer {meta['layer']}")
        elif args.command == "sweep":
            from .sweeps import sweep

            if args.interval is not None and args.intervals is not None:
                raise ValueError("give --interval (one for every setting) or --intervals (a dimension), not both")
            method_params = _method_params(args, args.methods)
            if args.out is None:
                args.out = _default_sweep_dir(args)
                if state.is_main_process:
                    print(f"apg-eval sweep: writing to {args.out} (no --out given; the same command resumes there)")
            pipe, classes, prompts = _pipeline(args)
            rows = sweep(pipe, args.out, methods=args.methods, scales=args.scales, method_params=method_params,
                         intervals=args.intervals or [args.interval],
                         num_images=args.num_images, classes=classes, prompts=prompts, seed=args.seed,
                         batch_size=args.batch_size, num_inference_steps=args.steps, reference=args.reference,
                         metrics=args.metrics, model=args.model, score_options=_scoring(args))
            if state.is_main_process:
                from .sweeps import write_report

                print(write_report(rows))
        elif args.command == "report":
            from .sweeps import collect_scores, write_report

            print(write_report(collect_scores(args.paths), args.output))
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        print(f"apg-eval {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
