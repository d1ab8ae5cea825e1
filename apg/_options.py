"""The command-line surface shared by `apg compare`, `apg eval` and `apg app`: one parser style, one error
style, the runtime options (--device, --dtype) and the guidance options built from the registry of methods
(apg.METHODS and each class's `parameters`), resolved into an apg.Setting.

Lists are space-separated everywhere (`--scales 1 4 8`); a comma inside a list value is an error that says so.
Values are checked by the library's own constructors (apg.Param bounds), so the CLI and the library agree.

The error contract (docs/cli.md): an apg.errors.ApgError is one line, `<prog>: error: <message>`, exit code 2;
anything else is a bug and ends in Python's traceback; `--traceback` shows the traceback of an ApgError too.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
from pathlib import Path

from . import guidance as _guidance
from .errors import ApgError, CommandError, ResourceError
from .setting import Setting

__all__ = ["CommandError", "ArgumentParser", "HelpFormatter", "SEED_MAX", "add_guidance_options",
           "check_guidance_options", "setting", "listed", "seed", "at_least", "parse_interval", "report",
           "run_guarded", "add_traceback_option", "add_runtime_options", "check_runtime_options", "output_file",
           "output_folder", "writing"]

SEED_MAX = 2**32 - 1  # the app's bound too: seeds are 32-bit everywhere


def report(prog: str, error) -> int:
    """Print `error` in the one error style and return the exit code 2."""
    message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the message
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def run_guarded(prog: str, work, traceback: bool = False) -> int:
    """work() -> its exit code (None: 0); an ApgError is one line and exit code 2 (with --traceback: raised).

    Nothing broader is caught: any other exception is a bug and shows Python's traceback.
    """
    try:
        return work() or 0
    except ApgError as error:
        if traceback:
            raise
        return report(prog, error)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def add_traceback_option(parser) -> None:
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, print the full Python traceback (for a bug report) instead of one line")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help (lists space-separated, as they are typed); none for None."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(_show(v) for v in default)
        return f"{text} (default: {_show(default)})"


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults in --help and usage errors in the one-line error style (exit code 2)."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        report(self.prog, f"{message} (see {self.prog} --help)")
        sys.exit(2)


# -- value types: each names what it expected ---------------------------------------------------------
def at_least(low: int):
    """An argparse type for an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"an integer >= {low}"
    return parse


def listed(kind, what: str):
    """An argparse type for one item of a space-separated list: refuses commas, says to use spaces."""

    def parse(text: str):
        if "," in text:
            items = " ".join(t.strip() for t in text.split(",") if t.strip())
            raise argparse.ArgumentTypeError(f"lists are space-separated: write {items}, not {text!r}")
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    parse.__name__ = what  # argparse names the type in its own messages
    return parse


def seed(text: str) -> int:
    """A seed: an integer in [0, SEED_MAX]."""
    value = listed(int, "an integer seed")(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seeds must be in [0, {SEED_MAX}], got {value}")
    return value


def parse_interval(text: str) -> tuple[float, float]:
    """`LOW,HIGH` (HIGH may be inf) or a name from apg.INTERVALS, as a sigma pair; checked by the constructors."""
    if text in _guidance.INTERVALS:
        return tuple(_guidance.INTERVALS[text])
    low, comma, high = text.partition(",")
    try:
        if not comma:
            raise ValueError
        return float(low), float(high)
    except ValueError:
        names = ", ".join(_guidance.INTERVALS)
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (sigma, e.g. 0.28,5.42) or one of {names}; "
                                         f"got {text!r}") from None


# -- guidance ---------------------------------------------------------------------------------------
def _dest(param) -> str:
    return f"guidance_{param.name}"


def _parameters() -> dict[str, list[tuple[str, object]]]:
    """{parameter name: [(method, Param), ...]} over every registered method, in registry order."""
    params: dict[str, list] = {}
    for method, cls in _guidance.METHODS.items():
        for param in cls.parameters:
            params.setdefault(param.name, []).append((method, param))
    return params


def _kind(param):
    return listed(param.kind, "an integer" if param.kind is int else "a number")


def add_guidance_options(parser, *, several: bool = True, default=("cfg", "apg")) -> None:
    """--methods (or --method), one option per parameter of the registered methods, --preset, --interval.

    A parameter shared by several methods (norm_threshold, momentum) is one option that sets it for each
    of them; left out, every method keeps its own class default (shown in the help).
    """
    group = parser.add_argument_group("guidance", "methods and their parameters (apg.METHODS)")
    names = ", ".join(f"{name} ({cls.label})" for name, cls in _guidance.METHODS.items())
    choices = list(_guidance.METHODS)
    if several:
        group.add_argument("--methods", nargs="+", type=listed(str, "a method name"), choices=choices,
                           default=list(default), metavar="METHOD", help=f"space-separated: {names}")
    else:
        group.add_argument("--method", choices=choices, default=default[0] if isinstance(default, (list, tuple))
                           else default, metavar="METHOD", help=names)
    for name, users in _parameters().items():
        param = users[0][1]
        defaults = {_show(p.default) for _, p in users}
        shown = (_show(param.default) if len(defaults) == 1
                 else ", ".join(f"{method} {_show(p.default)}" for method, p in users))
        bounds = (f">= {_show(param.low)}" if param.high == math.inf
                  else f"in [{_show(param.low)}, {_show(param.high)}]")
        methods = ", ".join(method for method, _ in users)
        try:
            group.add_argument(f"--{name.replace('_', '-')}", dest=_dest(param), type=_kind(param),
                               metavar=name.upper(),
                               help=f"{param.help}; {bounds}; for {methods} (default: {shown})")
        except argparse.ArgumentError as error:
            raise ValueError(f"guidance parameter {name!r} of {methods} clashes with an option of "
                             f"{parser.prog}: {error}") from None
    presets = ", ".join(f"{k} (eta {v['eta']:g}, r {v['norm_threshold']:g}, beta {v['momentum']:g})"
                        for k, v in _guidance.PRESETS.items())
    group.add_argument("--preset", choices=list(_guidance.PRESETS), metavar="PRESET",
                       help=f"APG's eta, r and beta from the paper, instead of --eta/--norm-threshold/--momentum: "
                            f"{presets}")
    intervals = ", ".join(f"{k} {lo:g},{hi:g}" for k, (lo, hi) in _guidance.INTERVALS.items())
    group.add_argument("--interval", type=parse_interval, metavar="LOW,HIGH",
                       help="guide only where LOW < sigma <= HIGH (the EDM noise level; HIGH may be inf), for every "
                            f"method; or a sourced interval: {intervals} (default: every step)")


def check_guidance_options(args, methods) -> None:
    """CommandError for a parameter or preset that no method in `methods` takes."""
    for name, users in _parameters().items():
        if getattr(args, _dest(users[0][1]), None) is None:
            continue
        if not {m for m, _ in users} & set(methods):
            takers = ", ".join(m for m, _ in users)
            raise CommandError(f"--{name.replace('_', '-')} applies to {takers}, none of which is among the "
                               f"methods {' '.join(methods)}")
    preset = getattr(args, "preset", None)
    if preset is not None:
        if not any(_takes_preset(_guidance.METHODS[m]) for m in methods):
            raise CommandError(f"--preset {preset} applies to apg, which is not among the methods {' '.join(methods)}")
        given = [f"--{k.replace('_', '-')}" for k in _guidance.PRESETS[preset]
                 if any(getattr(args, _dest(p), None) is not None for _, p in _parameters().get(k, ()))]
        if given:
            raise CommandError(f"give either --preset {preset} or {' '.join(given)}, not both (the preset sets "
                               f"{', '.join(_guidance.PRESETS[preset])})")


def _takes_preset(cls) -> bool:
    return hasattr(cls, "from_preset")


def setting(args, method: str, scale: float) -> Setting:
    """The apg.Setting of `method` at `scale` from the parsed options; an apg.errors.InputError for bad values."""
    params = {p.name: getattr(args, _dest(p), None) for p in _guidance.METHODS[method].parameters}
    preset = getattr(args, "preset", None)
    return Setting.from_options(method, scale, preset=preset if _takes_preset(_guidance.METHODS[method]) else None,
                                interval=getattr(args, "interval", None), **params)


# -- runtime and output -----------------------------------------------------------------------------
def add_runtime_options(parser, default_device: str) -> None:
    """--device and --dtype, resolved by apg.runtime; `default_device` says what None means for this command."""
    from .runtime import DTYPES

    group = parser.add_argument_group("runtime")
    group.add_argument("--device", help=f"torch device: cpu, cuda, cuda:1, mps (default: {default_device})")
    group.add_argument("--dtype", choices=list(DTYPES),
                       help="weights and compute dtype (default: float32 on the CPU; bfloat16 on CUDA where "
                            "supported, else float16; builtin: float32)")


def check_runtime_options(args) -> None:
    """A --device this machine lacks is refused now, before a model loads (apg.runtime.resolve_device)."""
    from .runtime import resolve_device

    if args.device is not None:
        resolve_device(args.device)


def _probe(option: str, path: Path, folder: Path) -> None:
    """CommandError unless a file can be created in `folder` or, if it does not exist yet, its nearest ancestor."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise CommandError(f"{option} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(dir=existing, prefix=".apg-probe-")  # root passes os.access, not this
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        raise CommandError(f"{option} {str(path)!r}: cannot write in {str(existing)!r} "
                           f"({error.strerror or type(error).__name__})") from None


def output_file(option: str, path) -> Path:
    """The file `option` names, checked before any work: not a folder, and writable where it goes."""
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{option} {str(path)!r} is a folder; give a file name, e.g. {str(path / 'out.png')!r}")
    _probe(option, path, path.parent)
    return path


def output_folder(option: str, path) -> Path:
    """The folder `option` names, checked before any work: not a file, and writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CommandError(f"{option} {str(path)!r} is a file; give a folder")
    _probe(option, path, path)
    return path


@contextlib.contextmanager
def writing(option: str, path):
    """A failed write of `path` (disk full, removed folder) as one apg.errors.ResourceError line."""
    try:
        yield
    except OSError as error:
        if isinstance(error, ApgError):
            raise
        raise ResourceError(f"{option} {str(path)!r}: cannot write it ({error.strerror or error})") from None
