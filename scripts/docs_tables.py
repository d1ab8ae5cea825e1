"""Write the tables of supported pipelines, schedulers and guider pipelines from apg's own tables.

    python scripts/docs_tables.py          # rewrite the tables between the marker comments (FILES)
    python scripts/docs_tables.py --check  # exit 1, naming the stale tables, if a file differs

Pipelines come from apg.registry.STOCK_PIPELINES (each entry's registered PipelineSpec and its apg.quirks), schedulers from
apg.schedulers.SUPPORTED_SCHEDULERS, the file column from the classes defined in pipelines/; the guider pipelines
(docs/guider.md) from apg/guider.py's tables. Each table sits between `<!-- NAME:start -->` and `<!-- NAME:end -->`;
everything else in a file is left as it is.
"""

from __future__ import annotations

import argparse
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
    """The quirks column: the negative-prompt argument and each quirk's own line (skipping's: docs/skipping.md)."""
    from apg.quirks import SKIPPING

    quirks = [f'`{spec.negative_prompt_arg}=""` passed when the call gives none'] if spec.negative_prompt_arg else []
    quirks += [quirk.describe() for quirk in spec.quirks if not isinstance(quirk, SKIPPING)]
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
