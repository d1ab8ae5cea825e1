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


def _add_guidance_params(p):
    p.add_argument("--eta", type=float, help="APG: weight of the parallel component")
    p.add_argument("--norm-threshold", type=float, help="APG / momentum CFG: r, bound on the update norm")
    p.add_argument("--momentum", type=float, help="APG / momentum CFG: beta (negative: reverse momentum)")
    p.add_argument("--preset", choices=("sdxl", "sd21", "edm2-s"), help="APG: the paper's eta, r, beta")


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
    p.add_argument("--method", choices=("cfg", "apg", "mcfg"), default="apg")
    p.add_argument("--scale", type=float, required=True, help="guidance scale w")
    _add_guidance_params(p)

    p = sub.add_parser("score", help="score a folder of images against a reference, written to JSON")
    p.add_argument("images", help="folder of images (or an archive)")
    p.add_argument("--metrics", nargs="+", choices=_metric_names(), default=["fid", "saturation", "clipping"],
                   metavar="METRIC", help=_metrics_help("fid saturation clipping"))
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

    p = sub.add_parser("sweep", help="scales x methods: CSV, plot and sample grid")
    _add_model(p, out_required=False)
    p.add_argument("--methods", nargs="+", choices=("cfg", "apg", "mcfg"), default=["cfg", "apg"],
                   help="space-separated: cfg, apg, mcfg (default cfg apg)")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0],
                   help="guidance scales, space-separated (default 1 2 4 8)")
    _add_guidance_params(p)
    p.add_argument("--metrics", nargs="+", choices=_metric_names(), metavar="METRIC",
                   help=_metrics_help("saturation clipping, plus fid with a --reference"))
    _add_scoring(p)

    p = sub.add_parser("report", help="collect score.json files into one table")
    p.add_argument("paths", nargs="+", type=Path, help="score.json files or folders to search")
    p.add_argument("--output", type=Path, help="CSV file to write")
    return parser


def _guidance_params(args) -> dict:
    return {"eta": args.eta, "norm_threshold": args.norm_threshold, "momentum": args.momentum, "preset": args.preset}


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

            guidance = make_guidance(args.method, args.scale, **_guidance_params(args))
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

            result = score(args.images, args.reference, metrics=args.metrics, **_scoring(args))
            if state.is_main_process:
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

            # --eta and --preset configure APG; --norm-threshold and --momentum APG and momentum CFG.
            params = {k: v for k, v in _guidance_params(args).items() if v is not None}
            method_params = {"apg": params, "mcfg": {k: v for k, v in params.items() if k not in ("eta", "preset")}}
            if args.out is None:
                args.out = _default_sweep_dir(args)
                if state.is_main_process:
                    print(f"apg-eval sweep: writing to {args.out} (no --out given; the same command resumes there)")
            pipe, classes, prompts = _pipeline(args)
            rows = sweep(pipe, args.out, methods=args.methods, scales=args.scales, method_params=method_params,
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
