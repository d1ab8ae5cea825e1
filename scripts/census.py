"""The census: every pipeline class in the installed Diffusers with a CFG line, and what apg does with it.

    python scripts/census.py               # rewrite docs/census.md and the README's census counts
    python scripts/census.py --check       # exit 1 if either differs, or a CFG class has no status
    python scripts/census.py --candidates  # refused classes whose pattern matches a guided class's

Which classes: the names `diffusers` exports (its lazy import table, dummies of missing backends included)
whose class, read statically from diffusers/pipelines/**.py, derives from `DiffusionPipeline`.

The rule for "has a CFG line", read from the source, never by building a pipeline: the class's `__call__`
(its own, or the nearest base's), or a method it calls as `self.name(...)` (resolved the same way: PAG's
`_apply_perturbed_attention_guidance`, TextToVideoZero's `backward_loop`) or a function of its own file it
calls by name (LTX-2's guidance helpers), one level deep, contains a
combination of a conditional and an unconditional prediction in one of the forms Diffusers writes:

    u + s * (c - u)   or   u + (c - u) * s       the plain CFG line (either order of the sum)
    c + s * (c - u)                              Krea2, Cosmos 2: CFG at w = s + 1
    x + s * (c - u)                              a term of a longer sum (InstructPix2Pix)
    delta = s * (c - u)                          a term named before the sum (LTX-2)
    s * c + (1 - s) * u   or   (s + 1) * c - s * u   UniDiffuser, Ideogram4, Kandinsky 3
    torch.lerp(u, c, s)                          Stable Cascade, Wuerstchen

where u and c are not constants and differ and the scale s mentions guidance (a name matching GUIDANCE, or
a local assigned from one: a mask blend `m * a + (1 - m) * b` is not CFG), other than `guidance_rescale`
(Lin et al.'s blend follows a CFG line, it is not one); or it drives a Diffusers guider
(`self.guider`), whose ClassifierFreeGuidance is that line. Pipelines whose `__call__` only hands
`guidance_scale` to a model as an embedding (Flux Fill and Control, Flux 2, LCM, SANA Sprint), to
sub-pipelines (the Kandinsky and Stable Cascade "combined" pipelines, whose prior and decoder are listed
themselves) or to Diffusers' own APG function (AceStep) have no CFG line and are not counted.

Status: `guided` (in apg's registry, `apg.registry.registered()`), `guider` (the pipeline holds a Diffusers
guider: guided through that slot by apg.guider, or "see issue 16" where this checkout has none), `refused`
(a live class: its reason is apg.registry.REFUSED[name]), `deprecated` (Diffusers' DeprecatedPipelineMixin:
not planned) or `onnx` (ONNX runtime sessions, no torch module for apg to hook). The last two are counted
apart. The batch, form and denoiser columns are what the source reading found; `--candidates` lists the
refused classes whose reading equals a guided class's (same batch pattern, plain line, denoiser and scale
argument, no extra guidance term): one registry line away, once a test confirms it.

Tested: the class has a case in the tiny registry (tests/tiny_registry.py TINY), which tests/test_every_pipeline.py
runs (parity with stock CFG, APG differs, the scheduler's own x0, stock back). The column says "no" for a guided
class without one. The README states the counts between `<!-- census:start -->` and `<!-- census:end -->`.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CENSUS = os.path.join(REPO, "docs", "census.md")
README = os.path.join(REPO, "README.md")
DENOISERS = ("unet", "transformer", "transformer_2", "prior", "decoder", "model", "denoiser", "transformer_3d")
GUIDANCE = re.compile(r"guid|cfg|scale")
# Call arguments that add a guidance term beyond the CFG line: the reason such a class is refused.
EXTRA_TERMS = {
    "image_guidance_scale": "three-way guidance with an image scale",
    "pag_scale": "perturbed-attention guidance term",
    "stg_scale": "spatio-temporal guidance term",
    "modality_scale": "modality guidance term",
    "audio_guidance_scale": "a separate audio guidance scale",
    "edit_guidance_scale": "edit guidance terms",
    "img_guidance_scale": "three-way guidance with an image scale",
}


@dataclass(frozen=True)
class Reading:
    """What the source says about one pipeline class's CFG."""

    name: str
    module: str  # path under diffusers/pipelines
    kind: str  # "live", "deprecated" or "onnx"
    form: str  # "u + s(c - u)", "c + s(c - u)", "s c + (1 - s) u", "lerp", "guider"
    batch: str  # "[uncond, cond]", "[cond, uncond]", "two passes" or "unclear"
    denoiser: str  # the self.<attr> the CFG output comes from ("" if unclear)
    scale_args: tuple  # CFG-related call arguments in the signature
    lines: int  # distinct combination expressions found

    def key(self):
        """What must match a guided class's reading for a one-line registry entry."""
        extra = tuple(arg for arg in self.scale_args if arg in EXTRA_TERMS)
        return (self.form, self.batch, self.denoiser, self.scale_args, extra, self.lines)


class _Source:
    """The top-level classes under diffusers/pipelines, each file parsed on first use."""

    def __init__(self, root: str):
        self.root, self.files, self._trees = root, {}, {}
        for folder, _, files in os.walk(root):
            for file in sorted(files):
                if file.endswith(".py"):
                    path = os.path.join(folder, file)
                    with open(path, encoding="utf-8") as f:
                        for name in re.findall(r"^class (\w+)", f.read(), re.M):
                            self.files.setdefault(name, path)  # repeated names are helpers (ResBlock)

    def _tree(self, path: str) -> dict:
        """Top-level classes and functions of one file, by name."""
        if path not in self._trees:
            with open(path, encoding="utf-8") as f:
                self._trees[path] = {n.name: n for n in ast.parse(f.read()).body
                                     if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        return self._trees[path]

    def node(self, name: str):
        """The ast.ClassDef of `name`, or None outside diffusers/pipelines."""
        node = self._tree(self.files[name]).get(name) if name in self.files else None
        return node if isinstance(node, ast.ClassDef) else None

    def function(self, name: str, function: str):
        """The module-level function `function` of the file that defines class `name`, or None."""
        node = self._tree(self.files[name]).get(function)
        return node if isinstance(node, ast.FunctionDef) else None

    def module(self, name: str) -> str:
        return os.path.relpath(self.files[name], self.root)

    def bases(self, name: str) -> list[str]:
        node = self.node(name)
        return [ast.unparse(base).split(".")[-1] for base in node.bases] if node else []

    def derives(self, name: str, base: str) -> bool:
        return name == base or any(self.derives(b, base) for b in self.bases(name) if b != name)

    def method(self, name: str, method: str):
        """The nearest definition of `method` along `name`'s static bases, or None."""
        node = self.node(name)
        if node is None:
            return None
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == method:
                return item
        for base in self.bases(name):
            found = self.method(base, method) if base != name else None
            if found is not None:
                return found
        return None


def _same(a, b) -> bool:
    return ast.dump(a) == ast.dump(b)


def _varying(node) -> bool:
    return not isinstance(node, ast.Constant)


def _difference(node):
    """(c, u) if node is `c - u` of two non-constants."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and _varying(node.left) and _varying(node.right):
        if not _same(node.left, node.right):
            return node.left, node.right
    return None


def _scaled_difference(node):
    """(c, u) if node is `s * (c - u)` or `(c - u) * s`."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _difference(node.right) or _difference(node.left)
    return None


def _one_minus(node, scale) -> bool:
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and isinstance(node.left, ast.Constant)
            and _same(node.right, scale))


# The forms _form recognises, the one a class is listed under first (PAG also has c + s(c - u) for its term).
FORMS = ("u + s(c - u)", "c + s(c - u)", "s c + (1 - s) u", "(s + 1) c - s u", "lerp", "x + s(c - u)",
         "c + delta")


def _form(node) -> tuple[str, str, ast.AST] | None:
    """(form, uncond source, scale) if `node` combines two predictions; see the module docstring."""
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.lerp" and len(node.args) == 3:
        return "lerp", ast.unparse(node.args[0]), node.args[2]
    if not isinstance(node, ast.BinOp):
        return None
    left, right = node.left, node.right
    if isinstance(node.op, ast.Add):
        for base, term in ((left, right), (right, left)):
            pair = _scaled_difference(term)
            scale = pair and (term.left if _difference(term.right) else term.right)
            if pair and _same(base, pair[1]):
                return "u + s(c - u)", ast.unparse(pair[1]), scale
            if pair and _same(base, pair[0]):
                return "c + s(c - u)", ast.unparse(pair[1]), scale
        for base, term in ((left, right), (right, left)):  # InstructPix2Pix: u + s (c - i) + s_i (i - u)
            pair = _scaled_difference(term)
            if pair:
                return "x + s(c - u)", ast.unparse(pair[1]), term.left if _difference(term.right) else term.right
        if all(isinstance(t, ast.BinOp) and isinstance(t.op, ast.Mult) for t in (left, right)):
            if _one_minus(right.left, left.left) and _varying(left.right) and _varying(right.right):
                return "s c + (1 - s) u", ast.unparse(right.right), left.left
    if isinstance(node.op, ast.Sub) and all(isinstance(t, ast.BinOp) and isinstance(t.op, ast.Mult)
                                            for t in (left, right)):
        grown = left.left
        if (isinstance(grown, ast.BinOp) and isinstance(grown.op, ast.Add) and _same(grown.left, right.left)
                and _varying(left.right) and _varying(right.right)):
            return "(s + 1) c - s u", ast.unparse(right.right), right.left
    return None


def _delta(node) -> tuple[str, str, ast.AST] | None:
    """LTX-2 names the term before summing: `delta = (s - 1) * (c - u)`, later `c + delta + stg_delta`."""
    if isinstance(node, ast.Assign) and _scaled_difference(node.value):
        term = node.value
        return "c + delta", ast.unparse(_scaled_difference(term)[1]), term.left if _difference(term.right) else term.right
    return None


def _guidance_names(nodes) -> set[str]:
    """Local names that hold a guidance scale: assigned from an expression mentioning one (to a fixed point)."""
    assigns = [(node.targets[0].id, {ast.unparse(n) for n in ast.walk(node.value) if isinstance(n, ast.Name)})
               for node in nodes if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)]
    names, grown = set(), True
    while grown:
        found = {target for target, used in assigns if any(GUIDANCE.search(n) for n in used) or used & names}
        grown, names = found > names, names | found
    return names


def _is_scale(scale, names) -> bool:
    """A CFG scale mentions guidance (a mask blend `m * a + (1 - m) * b` does not)."""
    names_in = [ast.unparse(n) for n in ast.walk(scale) if isinstance(n, (ast.Name, ast.Attribute))]
    return any((GUIDANCE.search(n) or n in names) and "rescale" not in n for n in names_in)  # not Lin's rescale


def _nodes(source: _Source, name: str, call) -> list:
    """Every node of `__call__`, of the methods it calls on self (resolved along the bases) and of the functions
    of its own file it calls by name (AceStep's `cfg_forward`), one level deep."""
    nodes, methods = list(ast.walk(call)), []
    for node in nodes:
        if not isinstance(node, ast.Call):
            continue
        method = None
        if _self_attr(node.func):
            method = source.method(name, node.func.attr)
        elif isinstance(node.func, ast.Name):
            method = source.function(name, node.func.id)
        if method is not None and method is not call and all(method is not m for m in methods):
                methods.append(method)
    return nodes + [node for method in methods for node in ast.walk(method)]


def _batch(nodes, uncond: str, calls: dict) -> str:
    """One pass split by .chunk(2)/.split (the order read from the unpacking), two passes, or unclear."""
    for node in nodes:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
                and len(node.targets[0].elts) == 2 and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute) and node.value.func.attr in ("chunk", "split")):
            first, second = (ast.unparse(e) for e in node.targets[0].elts)
            if uncond == first:
                return "[uncond, cond]"
            if uncond == second:
                return "[cond, uncond]"
    return "two passes" if sum(calls.values()) >= 2 else "unclear"


def _self_attr(node) -> str | None:
    """"name" if node is `self.name`."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _denoiser_calls(nodes) -> dict[str, int]:
    """Call sites per denoiser attribute, through local aliases too (Wan: `current_model = self.transformer`)."""
    calls, aliases = {}, {}
    for node in nodes:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            value = node.value.body if isinstance(node.value, ast.IfExp) else node.value
            if _self_attr(value) in DENOISERS:
                aliases.setdefault(node.targets[0].id, _self_attr(value))
    for node in nodes:
        if isinstance(node, ast.Call):
            name = _self_attr(node.func) or (aliases.get(node.func.id) if isinstance(node.func, ast.Name) else None)
            if name in DENOISERS:
                calls[name] = calls.get(name, 0) + 1
    return calls


def _uses_guider(nodes) -> bool:
    return any(_self_attr(node) == "guider" for node in nodes)


def _scale_args(call) -> tuple:
    names = [a.arg for a in call.args.args + call.args.kwonlyargs]
    return tuple(n for n in names if n.endswith(("guidance_scale", "cfg_scale")) or n in EXTRA_TERMS
                 or n == "guidance_rescale")


def read(name: str, source: _Source) -> Reading | None:
    """The Reading of exported pipeline class `name`, or None if its `__call__` has no CFG line."""
    call = source.method(name, "__call__")
    if call is None:
        return None
    nodes = _nodes(source, name, call)
    forms, names = {}, _guidance_names(nodes)
    for node in nodes:
        found = _form(node) or _delta(node)
        if found and _is_scale(found[2], names):
            forms.setdefault(ast.unparse(node), found[:2])
    calls = _denoiser_calls(nodes)
    if forms:
        form, uncond = min(forms.values(), key=lambda found: FORMS.index(found[0]))
        batch = _batch(nodes, uncond, calls)
    elif _uses_guider(nodes):
        form, batch = "guider", "guider"
    else:
        return None
    # The most-called denoiser; a tie (StableUnCLIP: a prior loop, then a unet loop) is unclear.
    most = max(calls.values(), default=0)
    tied = [name for name, count in calls.items() if count == most]
    denoiser = tied[0] if len(tied) == 1 else ""
    module = source.module(name)
    kind = ("onnx" if os.path.basename(module).startswith("pipeline_onnx") else
            "deprecated" if source.derives(name, "DeprecatedPipelineMixin") or module.startswith("deprecated")
            else "live")
    return Reading(name, module, kind, form, batch, denoiser, _scale_args(call), len(forms))


def readings() -> list[Reading]:
    """Every exported pipeline class with a CFG line, sorted by name."""
    import diffusers

    source = _Source(os.path.join(os.path.dirname(diffusers.__file__), "pipelines"))
    exported = sorted(name for name in diffusers._class_to_module if name in source.files)  # no class import
    found = []
    for name in exported:
        if name != "DiffusionPipeline" and source.derives(name, "DiffusionPipeline"):
            reading = read(name, source)
            if reading is not None:
                found.append(reading)
    return found


KIND_REASON = {
    "deprecated": "deprecated in Diffusers (DeprecatedPipelineMixin): not planned",
    "onnx": "ONNX runtime sessions, no torch denoiser for apg to hook: not planned",
}


def _guider_status() -> str:
    import importlib.util

    if importlib.util.find_spec("apg.guider") is not None:
        return "guided through its `guider` slot (apg.guider)"
    return "guider pipeline: see issue 16"


def statuses(found: list[Reading]) -> dict[str, tuple[str, str]]:
    """Class name -> (status, reason) for every Reading; status "unknown" where apg has no entry for it."""
    from apg.registry import REFUSED, registered

    guided = {cls.__name__ for cls in registered()}
    result = {}
    for r in found:
        if r.kind != "live":
            result[r.name] = (r.kind, KIND_REASON[r.kind])
        elif r.name in guided:
            result[r.name] = ("guided", "")
        elif r.form == "guider":
            result[r.name] = ("guider", _guider_status())
        elif r.name in REFUSED:
            result[r.name] = ("refused", REFUSED[r.name])
        else:
            result[r.name] = ("unknown", "not in apg.registry.REFUSED: run `python scripts/census.py --draft`")
    return result


def _draft_reason(r: Reading) -> str:
    """A first reason for a class not yet guided, from its reading (edit it where the source says more)."""
    scale = next((a for a in r.scale_args if a in ("true_cfg_scale", "guidance_scale")), "none read")
    quirks = [EXTRA_TERMS[a] for a in r.scale_args if a in EXTRA_TERMS]
    quirks += ["`guidance_rescale`"] * ("guidance_rescale" in r.scale_args)
    quirks += [f"{r.lines} combination expressions"] * (r.lines > 1)
    return (f"not yet verified: {r.batch}, {r.form} on `{r.denoiser or '?'}`, scale `{scale}`"
            + (f"; {', '.join(quirks)}" if quirks else ""))


def candidates(found: list[Reading], status: dict) -> list[tuple[str, str, bool]]:
    """(class, guided class with the same reading, same Diffusers folder?) for each refused class not yet
    verified whose reading matches a guided class's: one registry line away, once a test confirms it."""
    guided = [r for r in found if status[r.name][0] == "guided"]
    found_pairs = []
    for r in found:
        if status[r.name][0] == "refused" and status[r.name][1].startswith("not yet verified"):
            twins = [g for g in guided if g.key() == r.key()]
            near = [g for g in twins if os.path.dirname(g.module) == os.path.dirname(r.module)]
            if twins:
                found_pairs.append((r.name, (near or twins)[0].name, bool(near)))
    return sorted(found_pairs, key=lambda pair: (not pair[2], pair[0]))


def tested_classes() -> set[str]:
    """The classes with a case in the tiny registry (tests/tiny_registry.py; importing it builds nothing)."""
    tests = os.path.join(REPO, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)  # the family modules import each other by bare name, as under pytest
    from tiny_registry import TINY, class_name

    return {class_name(key) for key in TINY}


def _counts(found: list[Reading], status: dict, tested: set[str]) -> dict[str, int]:
    count = {s: sum(1 for v in status.values() if v[0] == s) for s in
             ("guided", "guider", "refused", "unknown", "deprecated", "onnx")}
    count["live"] = sum(1 for r in found if r.kind == "live")
    count["tested"] = sum(1 for name, (state, _) in status.items() if state == "guided" and name in tested)
    return count


def untested(status: dict, tested: set[str]) -> list[str]:
    """The guided classes without a case in the tiny registry."""
    return sorted(name for name, (state, _) in status.items() if state == "guided" and name not in tested)


def readme_counts(found: list[Reading], status: dict, tested: set[str]) -> str:
    """The README's census sentence (between its census markers)."""
    import diffusers

    count = _counts(found, status, tested)
    return (f"Diffusers {diffusers.__version__}: {count['live']} live classes with a CFG line, {count['guided']} guided "
            f"({count['tested']} of them tested on tiny components by `tests/test_every_pipeline.py`), "
            f"{count['guider']} through a Diffusers guider, {count['refused']} refused with the reason (which "
            f"`apg.guide` names)" + (f", {count['unknown']} unknown" if count["unknown"] else "")
            + f"; {count['deprecated']} deprecated and {count['onnx']} ONNX classes are not planned.")


def render(found: list[Reading], status: dict, tested: set[str] | None = None) -> str:
    """docs/census.md; `tested`: the classes with a tiny case (default: tested_classes())."""
    import diffusers

    tested = tested_classes() if tested is None else tested
    count = _counts(found, status, tested)
    missing = untested(status, tested)
    lines = [
        "# Census: the CFG pipelines of Diffusers and what apg does with each",
        "",
        "<!-- generated by scripts/census.py; edit apg/registry.py (REFUSED, STOCK_PIPELINES), not this file -->",
        "",
        f"Diffusers {diffusers.__version__}: {count['live']} live pipeline classes with a CFG line: "
        f"{count['guided']} guided ({count['tested']} tested), {count['guider']} through a Diffusers guider, "
        f"{count['refused']} refused"
        + (f", {count['unknown']} unknown" if count["unknown"] else "")
        + f"; plus {count['deprecated']} deprecated and {count['onnx']} ONNX classes, not planned.",
        "",
        "What counts as a CFG line, and how the batch and form columns are read, is the docstring of "
        "`scripts/census.py`. Tested: the class has a case in `tests/tiny_registry.py`, which "
        "`tests/test_every_pipeline.py` runs. Regenerate with `python scripts/census.py`; `tests/test_census.py` "
        "fails when the installed Diffusers has a CFG class this table does not know, or when this file drifts.",
        "",
    ]
    if missing:
        lines += [f"Guided without a tiny case ({len(missing)}): {', '.join(f'`{name}`' for name in missing)}.", ""]
    for title, kinds in (("Live classes", ("live",)), ("Deprecated and ONNX classes", ("deprecated", "onnx"))):
        lines += [f"## {title}", "", "| class | module | batch | form | status | tested | reason |",
                  "|---|---|---|---|---|---|---|"]
        for r in found:
            if r.kind in kinds:
                state, reason = status[r.name]
                case = "yes" if r.name in tested else "no" if state == "guided" else ""
                lines.append(f"| `{r.name}` | `{r.module}` | {r.batch} | `{r.form}` | {state} | {case} | "
                             f"{reason.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


README_MARKERS = re.compile(r"(<!-- census:start -->\n).*?(<!-- census:end -->)", re.S)


def render_readme(text: str, counts: str) -> str:
    """README.md `text` with its census sentence replaced; ValueError without exactly one marker pair."""
    if len(README_MARKERS.findall(text)) != 1:
        raise ValueError("README.md needs exactly one <!-- census:start --> ... <!-- census:end --> pair")
    import textwrap

    counts = textwrap.fill(counts, 115, break_long_words=False, break_on_hyphens=False)
    return README_MARKERS.sub(lambda m: f"{m[1]}{counts}\n{m[2]}", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="only check that docs/census.md is up to date")
    group.add_argument("--candidates", action="store_true", help="list refused classes one registry line away")
    group.add_argument("--draft", action="store_true", help="print REFUSED entries for classes with no status")
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)  # this checkout's apg, not an installed one
    found = readings()
    status = statuses(found)
    if args.draft:
        print("\n".join(f'    "{r.name}": "{_draft_reason(r)}",' for r in found if status[r.name][0] == "unknown"))
        return 0
    if args.candidates:
        pairs = candidates(found, status)
        print(f"{len(pairs)} refused classes read like a guided one ({sum(p[2] for p in pairs)} in the same folder):")
        print("\n".join(f"{name}  like {twin}{'' if near else '  (another family)'}" for name, twin, near in pairs))
        return 0
    unknown = sorted(name for name, (state, _) in status.items() if state == "unknown")
    tested = tested_classes()
    wanted = {CENSUS: render(found, status, tested)}
    current = {path: open(path, encoding="utf-8", newline="").read() if os.path.exists(path) else ""
               for path in (CENSUS, README)}
    try:
        wanted[README] = render_readme(current[README], readme_counts(found, status, tested))
    except ValueError as error:
        print(f"census: {error}", file=sys.stderr)
        return 2
    stale = [os.path.relpath(path, REPO) for path in wanted if wanted[path] != current[path]]
    if args.check:
        if unknown or stale:
            print(f"census: {', '.join(stale) or 'nothing'} out of date"
                  f"{'; no status for ' + ', '.join(unknown) if unknown else ''}"
                  "; run `python scripts/census.py` (and `--draft` for the missing REFUSED entries)", file=sys.stderr)
            return 1
        return 0
    from apg.evaluation.files import write_text  # atomic, with the user's umask

    for path in wanted:
        if wanted[path] != current[path]:
            write_text(path, wanted[path])
            print(f"census: {os.path.relpath(path, REPO)} updated")
    if untested(status, tested):
        print(f"census: guided classes without a tiny case: {', '.join(untested(status, tested))}", file=sys.stderr)
    if unknown:
        print(f"census: no status for {len(unknown)} classes: {', '.join(unknown)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
