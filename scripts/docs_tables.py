"""Write the tables of supported pipelines, schedulers and guider pipelines from apg's own tables.

    python scripts/docs_tables.py          # rewrite the tables between the marker comments (FILES)
    python scripts/docs_tables.py --check  # exit 1, naming the stale tables, if a file differs

Pipelines come from apg.registry.STOCK_PIPELINES (each entry's registered PipelineSpec), schedulers from
apg.schedulers.SUPPORTED_SCHEDULERS, the file column from the classes defined in pipelines/; the guider pipelines
(docs/guider.md) from apg/guider.py's tables. Each table sits between `<!-- NAME:start -->` and `<!-- NAME:end -->`;
everything else in a file is left as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BATCH_TEXT = {
    "uncond_first": "one pass on `[uncond, cond]`",
    "cond_first": "one pass on `[cond, uncond]`",
    "separate": "two passes, cond then uncond",
}
# PipelineSpec field -> how a non-default value reads in the quirks column; other fields read `name=value`.
QUIRK_TEXT = {
    "rescale_attr": lambda value: f"`{value}` re-applied to the guided output",
    "negative_prompt_arg": lambda value: f'`{value}=""` passed when the call gives none',
    "steps_both_halves": lambda value: "steps the latents of both halves",
    "denoiser_2": lambda value: f"second expert `{value}` hooked too",
    "scale_2_arg": lambda value: f"its steps scaled by `{value}`",
    "dynamic_scale_arg": lambda value: f"`{value}` reproduced",
    "to_stepped": lambda value: f"guides only the stepped part of the output (`{value.__name__}`)",
    "refused_args": lambda value: "refused: " + ", ".join(f"`{arg}`" for arg in sorted(value)),
    "negated_output": lambda value: "steps the negated output (x0 read from what is stepped)",
    "renorm_to_cond": lambda value: "renormalised to the cond prediction's norm",
    "renorm_arg": lambda value: f"renormalisation switched by `{value}`",
    "cfg_trunc_arg": lambda value: f"`{value}` truncation reproduced",
    "from_output": lambda value: f"outputs batched by `{value.__name__}`",
}
SPEC_COLUMNS = ("denoiser", "batch", "scale_arg")  # fields with a column of their own
SKIP_FIELDS = ("batch_dims", "zero_output", "conditioners")  # what skipping needs to know, not how CFG runs: docs/skipping.md


def _pipeline_files() -> dict[str, str]:
    """Stock class name -> the file in pipelines/ that defines its guided subclass."""
    files = {}
    for name in sorted(os.listdir(os.path.join(REPO, "pipelines"))):
        if name.endswith(".py"):
            with open(os.path.join(REPO, "pipelines", name), encoding="utf-8") as f:
                for stock in re.findall(r"^class \w+\(GuidancePipelineMixin, (\w+)\)", f.read(), re.M):
                    files[stock] = name
    return files


def _quirks(spec) -> str:
    quirks = []
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if field.name in SPEC_COLUMNS + SKIP_FIELDS or value == default:
            continue
        text = QUIRK_TEXT.get(field.name)
        shown = getattr(value, "__name__", None) or repr(value)  # a function by name: no memory address
        quirks.append(text(value) if text else f"`{field.name}={shown}`")
    return "; ".join(quirks) or "none"


def pipelines_table() -> str:
    import diffusers

    from apg.registry import STOCK_PIPELINES, registered

    specs, files = registered(), _pipeline_files()
    rows = ["| pipeline | denoiser | batch | scale argument | quirks handled | file in `pipelines/` |",
            "|---|---|---|---|---|---|"]
    for name in STOCK_PIPELINES:
        spec = specs[getattr(diffusers, name)]
        file = f"`{files[name]}`" if name in files else "none"
        rows.append(f"| `{name}` | `{spec.denoiser}` | {BATCH_TEXT[spec.batch]} | `{spec.scale_arg}` | "
                    f"{_quirks(spec)} | {file} |")
    return "\n".join(rows)


def schedulers_table() -> str:
    from apg.schedulers import SUPPORTED_SCHEDULERS

    rows = ["| scheduler | prediction types |", "|---|---|"]
    rows += [f"| `{name}` | {', '.join(predictions)} |" for name, predictions in SUPPORTED_SCHEDULERS.items()]
    return "\n".join(rows)


def guider_table() -> str:
    """The guider pipelines and modular families, from apg/guider.py's PIPELINES, QUIRKS, REFUSED and
    REFUSED_BY_CHECKS."""
    from apg.guider import PIPELINES, QUIRKS, REFUSED, REFUSED_BY_CHECKS

    rows = ["| pipeline | guider slot(s) | what apg does | tested |", "|---|---|---|---|"]
    for name, listed in sorted(PIPELINES.items(), key=lambda item: not item[1].tested):  # tested first
        does = ["guides in x0"] + ([listed.note] if listed.note else [])
        if name in QUIRKS:
            does.append(f"quirk: {QUIRKS[name].what}; apg does the same to the guided prediction")
        slots = ", ".join(f"`{slot}`" for slot in listed.slots)
        rows.append(f"| `{name}` | {slots} | {'; '.join(does)} | {'yes' if listed.tested else 'no'} |")
    rows += [f"| `{name}` | | refused by name, before any work: {reason} | |" for name, reason in REFUSED.items()]
    rows += [f"| {name} | | refused: {reason} | |" for name, reason in REFUSED_BY_CHECKS.items()]
    return "\n".join(rows)


TABLES = {"pipelines": pipelines_table, "schedulers": schedulers_table, "guider": guider_table}
FILES = {"docs/pipelines.md": ("pipelines", "schedulers"), "docs/guider.md": ("guider",)}  # file -> the tables it holds


def _pattern(name: str):
    return re.compile(re.escape(f"<!-- {name}:start -->") + r".*?" + re.escape(f"<!-- {name}:end -->"), re.S)


def render(text: str, names=FILES["docs/pipelines.md"], file: str = "docs/pipelines.md") -> str:
    """`text` (`file`) with its marked tables `names` regenerated; ValueError if a marker pair is missing."""
    for name in names:
        pattern = _pattern(name)
        if len(pattern.findall(text)) != 1:
            raise ValueError(f"{file} needs exactly one <!-- {name}:start --> ... <!-- {name}:end --> pair")
        text = pattern.sub(lambda _: f"<!-- {name}:start -->\n{TABLES[name]()}\n<!-- {name}:end -->", text)
    return text


def stale_tables(current: str, wanted: str, names=FILES["docs/pipelines.md"]) -> list[str]:
    return [name for name in names if _pattern(name).search(current)[0] != _pattern(name).search(wanted)[0]]


def _write_atomically(path: str, text: str):
    mode = os.stat(path).st_mode & 0o777  # keep the file's permissions
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)  # this checkout's apg, not an installed one
    stale = {}
    for file, names in FILES.items():
        path = os.path.join(REPO, file)
        with open(path, encoding="utf-8", newline="") as f:
            current = f.read()
        try:
            wanted = render(current, names, file)
        except ValueError as error:
            print(f"docs_tables: {error}", file=sys.stderr)
            return 2
        if wanted != current:
            stale[file] = stale_tables(current, wanted, names)
            if not args.check:
                _write_atomically(path, wanted)
                print(f"docs_tables: {file} updated")
    if args.check and stale:
        listed = "; ".join(f"{file} ({', '.join(names)})" for file, names in stale.items())
        print(f"docs_tables: tables out of date in {listed}; run `python scripts/docs_tables.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
